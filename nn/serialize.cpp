// .npy and .npz, written and read by hand: the formats are small, and doing it here lets every
// length and offset be checked against the file's size (a truncated file is an error, never a
// read past the end).
#include "serialize.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <bit>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <tapegrad/tapegrad.hpp>

namespace tapegrad::nn {

static_assert(std::endian::native == std::endian::little, "the .npy/.npz code assumes a little-endian host");

// ---- CRC-32 ------------------------------------------------------------------------------------
uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

namespace {

using Bytes = std::vector<char>;

size_t nbytes(const Tensor& t) { return t.numel() * dtype_size(t.dtype()); }

void* raw(const Tensor& t) {
  switch (t.dtype()) {
    case kFloat32: return t.data_ptr<float>();
    case kFloat64: return t.data_ptr<double>();
    default: return t.data_ptr<int64_t>();
  }
}

const char* descr_of(Dtype d) {
  switch (d) {
    case kFloat32: return "<f4";
    case kFloat64: return "<f8";
    default: return "<i8";
  }
}

// ---- .npy --------------------------------------------------------------------------------------
// Magic, version 1.0, the header length (uint16 LE), the header dict padded with spaces so the
// data starts at a multiple of 64 bytes and ending in '\n', then the raw C-order data.
Bytes npy_bytes(const Tensor& t) {
  std::ostringstream h;
  h << "{'descr': '" << descr_of(t.dtype()) << "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < t.dim(); ++i) {
    if (i) h << ", ";
    h << t.shape()[i];
  }
  if (t.dim() == 1) h << ",";
  h << "), }";
  std::string header = h.str();
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  Bytes out = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.push_back(static_cast<char>(header.size() & 0xFF));
  out.push_back(static_cast<char>((header.size() >> 8) & 0xFF));
  out.insert(out.end(), header.begin(), header.end());
  const char* d = static_cast<const char*>(raw(t));
  out.insert(out.end(), d, d + nbytes(t));
  return out;
}

// The value of `key` in a header dict such as {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
std::string header_field(const std::string& where, const std::string& h, const std::string& key) {
  size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) fail("load: ", where, ": .npy header has no '", key, "': ", h);
  size_t colon = h.find(':', k);
  if (colon == std::string::npos) fail("load: ", where, ": malformed .npy header: ", h);
  size_t s = h.find_first_not_of(' ', colon + 1);
  if (s == std::string::npos) fail("load: ", where, ": malformed .npy header: ", h);
  size_t e;
  if (h[s] == '\'') e = h.find('\'', s + 1) + 1;
  else if (h[s] == '(') e = h.find(')', s) + 1;
  else e = h.find_first_of(",}", s);
  if (e == std::string::npos || e == 0 || e <= s) fail("load: ", where, ": malformed .npy header: ", h);
  return h.substr(s, e - s);
}

// Parses one .npy held in bytes [p, p+n) into a new tensor; `where` names it in errors.
Tensor parse_npy(const std::string& where, const char* p, size_t n) {
  if (n < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) fail("load: ", where, ": not an .npy array (bad magic or truncated)");
  int major = static_cast<uint8_t>(p[6]);
  size_t hlen, start;
  if (major == 1) {
    hlen = static_cast<uint8_t>(p[8]) | (size_t(static_cast<uint8_t>(p[9])) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) fail("load: ", where, ": truncated .npy header");
    uint32_t l;
    std::memcpy(&l, p + 8, 4);
    hlen = l;
    start = 12;
  } else {
    fail("load: ", where, ": unsupported .npy version ", major);
  }
  if (start + hlen > n) fail("load: ", where, ": truncated .npy header (", n, " bytes)");
  std::string h(p + start, hlen);
  std::string descr = header_field(where, h, "descr");
  Dtype dtype;
  if (descr == "'<f4'") dtype = kFloat32;
  else if (descr == "'<f8'") dtype = kFloat64;
  else if (descr == "'<i8'") dtype = kInt64;
  else fail("load: ", where, ": unsupported dtype ", descr, " (float32, float64 or int64 little-endian)");
  if (header_field(where, h, "fortran_order") != "False") fail("load: ", where, ": Fortran-order arrays are not supported");
  std::string shape_s = header_field(where, h, "shape");  // "(2, 3)", "(3,)", "()"
  Shape shape;
  for (size_t i = 1; i + 1 < shape_s.size();) {
    if (shape_s[i] == ' ' || shape_s[i] == ',') { ++i; continue; }
    if (shape_s[i] < '0' || shape_s[i] > '9') fail("load: ", where, ": malformed shape ", shape_s);
    size_t v = 0;
    while (i + 1 < shape_s.size() && shape_s[i] >= '0' && shape_s[i] <= '9') v = v * 10 + size_t(shape_s[i++] - '0');
    shape.push_back(v);
  }
  // The size the header promises, checked against the bytes present before allocating anything.
  size_t data = start + hlen, need = dtype_size(dtype);
  for (size_t d : shape)
    if (d != 0 && need > (n - data) / d + 1) need = SIZE_MAX;  // more than the file could hold
    else need *= d;
  if (need == SIZE_MAX || n - data != need)
    fail("load: ", where, ": holds ", n - data, " data bytes, but shape ", shape, " ", dtype, " needs ",
         need == SIZE_MAX ? std::string("more") : std::to_string(need), n - data < need ? " (truncated)" : "");
  Tensor t = empty(shape, dtype);
  std::memcpy(raw(t), p + data, nbytes(t));
  return t;
}

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("load: cannot open '", path, "'");
  Bytes b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("load: error reading '", path, "'");
  return b;
}

// Writes to path.tmp then renames, so a crash never leaves a half-written file under `path`.
void write_file(const std::string& path, const Bytes& b) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("save: cannot open '", tmp, "' for writing");
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
    out.flush();
    if (!out) fail("save: error writing '", tmp, "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("save: cannot rename '", tmp, "' to '", path, "'");
}

// ---- zip (stored entries only) -------------------------------------------------------------------
void put16(Bytes& b, uint32_t v) {
  b.push_back(char(v & 0xFF));
  b.push_back(char((v >> 8) & 0xFF));
}
void put32(Bytes& b, uint32_t v) {
  put16(b, v & 0xFFFF);
  put16(b, v >> 16);
}
uint32_t get16(const Bytes& b, size_t at) { return uint8_t(b[at]) | (uint32_t(uint8_t(b[at + 1])) << 8); }
uint32_t get32(const Bytes& b, size_t at) { return get16(b, at) | (get16(b, at + 2) << 16); }
uint64_t get64(const Bytes& b, size_t at) { return get32(b, at) | (uint64_t(get32(b, at + 4)) << 32); }

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01: fixed, so saves are reproducible

}  // namespace

void save_npy(const Tensor& t, const std::string& path) { write_file(path, npy_bytes(t)); }

Tensor load_npy(const std::string& path) {
  Bytes b = read_file(path);
  return parse_npy(path, b.data(), b.size());
}

void write_npz(const std::string& path, const std::vector<NamedTensor>& arrays) {
  Bytes zip, central;
  for (const auto& [name, t] : arrays) {
    std::string fname = name + ".npy";
    Bytes data = npy_bytes(t);
    if (data.size() >= 0xFFFFFFFFu || zip.size() >= 0xFFFFFFFFu)
      fail("save: '", name, "' ", t.shape(), " makes the archive too large (zip64 is not supported)");
    uint32_t crc = crc32(data.data(), data.size());
    auto header = [&](Bytes& b, bool is_central, uint32_t offset) {
      put32(b, is_central ? kCentralSig : kLocalSig);
      if (is_central) put16(b, 20);  // version made by
      put16(b, 20);                  // version needed to extract
      put16(b, 0);                   // flags
      put16(b, 0);                   // method: stored
      put16(b, 0);                   // time
      put16(b, kDosDate);
      put32(b, crc);
      put32(b, uint32_t(data.size()));  // compressed size
      put32(b, uint32_t(data.size()));  // uncompressed size
      put16(b, uint32_t(fname.size()));
      put16(b, 0);  // extra length
      if (is_central) {
        put16(b, 0);  // comment length
        put16(b, 0);  // disk number
        put16(b, 0);  // internal attributes
        put32(b, 0);  // external attributes
        put32(b, offset);
      }
      b.insert(b.end(), fname.begin(), fname.end());
    };
    uint32_t offset = uint32_t(zip.size());
    header(zip, false, 0);
    zip.insert(zip.end(), data.begin(), data.end());
    header(central, true, offset);
  }
  if (arrays.size() >= 0xFFFF) fail("save: ", arrays.size(), " arrays are too many for a zip without zip64");
  uint32_t cd_offset = uint32_t(zip.size());
  zip.insert(zip.end(), central.begin(), central.end());
  put32(zip, kEndSig);
  put16(zip, 0);  // this disk
  put16(zip, 0);  // disk with the central directory
  put16(zip, uint32_t(arrays.size()));
  put16(zip, uint32_t(arrays.size()));
  put32(zip, uint32_t(central.size()));
  put32(zip, cd_offset);
  put16(zip, 0);  // comment length
  write_file(path, zip);
}

std::vector<NamedTensor> read_npz(const std::string& path) {
  Bytes b = read_file(path);
  auto need = [&](size_t at, size_t n, const char* what) {
    if (at > b.size() || n > b.size() - at) fail("load: '", path, "' is truncated (", what, ")");
  };
  // The end record is the last 22 bytes unless there is a comment: search backwards.
  if (b.size() < 22) fail("load: '", path, "' is too short to be an .npz (", b.size(), " bytes; truncated?)");
  size_t end = std::string::npos;
  for (size_t i = b.size() - 22 + 1; i-- > 0 && b.size() - i <= 22 + 65535;)
    if (get32(b, i) == kEndSig) { end = i; break; }
  if (end == std::string::npos) fail("load: '", path, "' is not a zip/.npz file (no end record; truncated?)");
  size_t count = get16(b, end + 10), cd_size = get32(b, end + 12), cd = get32(b, end + 16);
  if (count == 0xFFFF || cd == 0xFFFFFFFFu) fail("load: '", path, "': zip64 archives are not supported");
  need(cd, cd_size, "central directory");
  std::vector<NamedTensor> out;
  size_t at = cd;
  for (size_t k = 0; k < count; ++k) {
    need(at, 46, "central directory entry");
    if (get32(b, at) != kCentralSig) fail("load: '", path, "': corrupt central directory");
    uint32_t method = get16(b, at + 10), crc = get32(b, at + 16);
    uint64_t csize = get32(b, at + 20), usize = get32(b, at + 24), offset = get32(b, at + 42);
    size_t nlen = get16(b, at + 28), xlen = get16(b, at + 30), clen = get16(b, at + 32);
    need(at + 46, nlen + xlen + clen, "central directory entry");
    std::string fname(b.data() + at + 46, nlen);
    // zip64 extra field (Python's zipfile may add it): the 64-bit values that were 0xFFFFFFFF.
    const size_t extra_end = at + 46 + nlen + xlen;  // inside the file: checked by need() above
    for (size_t x = at + 46 + nlen; x + 4 <= extra_end;) {
      uint32_t id = get16(b, x), len = get16(b, x + 2);
      size_t y = x + 4, field_end = std::min(extra_end, x + 4 + len);
      if (id == 1) {
        if (usize == 0xFFFFFFFFu && y + 8 <= field_end) usize = get64(b, y), y += 8;
        if (csize == 0xFFFFFFFFu && y + 8 <= field_end) csize = get64(b, y), y += 8;
        if (offset == 0xFFFFFFFFu && y + 8 <= field_end) offset = get64(b, y), y += 8;
      }
      x += 4 + len;
    }
    at += 46 + nlen + xlen + clen;
    if (method != 0)
      fail("load: '", path, "': entry '", fname, "' is compressed (method ", method,
           "); only stored entries are read (np.savez, not np.savez_compressed)");
    if (csize != usize) fail("load: '", path, "': entry '", fname, "' has inconsistent sizes");
    need(offset, 30, "local header");
    if (get32(b, offset) != kLocalSig) fail("load: '", path, "': corrupt local header for '", fname, "'");
    size_t data = offset + 30 + get16(b, offset + 26) + get16(b, offset + 28);
    need(data, csize, "entry data");
    if (crc32(b.data() + data, csize) != crc) fail("load: '", path, "': CRC mismatch in entry '", fname, "' (corrupt file)");
    std::string name = fname.size() > 4 && fname.ends_with(".npy") ? fname.substr(0, fname.size() - 4) : fname;
    out.emplace_back(name, parse_npy(path + ":" + fname, b.data() + data, csize));
  }
  return out;
}

void save(const Module& m, const std::string& path) { write_npz(path, m.named_parameters()); }

void load(Module& m, const std::string& path) {
  // 1. Everything into temporaries (throws on any file problem).
  std::vector<NamedTensor> file = read_npz(path);
  std::vector<NamedTensor> params = m.named_parameters();
  // 2. Every check before the first write.
  std::vector<Tensor> source(params.size());
  std::vector<bool> used(file.size(), false);
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, p] = params[i];
    size_t j = 0;
    while (j < file.size() && file[j].first != name) ++j;
    if (j == file.size()) fail("load: '", path, "' has no parameter '", name, "' ", p.shape(), " of the module");
    const Tensor& t = file[j].second;
    if (!(t.shape() == p.shape()))
      fail("load: parameter '", name, "' has shape ", t.shape(), " in '", path, "' but ", p.shape(), " in the module");
    if (t.dtype() != p.dtype())
      fail("load: parameter '", name, "' has dtype ", t.dtype(), " in '", path, "' but ", p.dtype(), " in the module");
    source[i] = t;
    used[j] = true;
  }
  for (size_t j = 0; j < file.size(); ++j)
    if (!used[j]) fail("load: '", path, "' has a parameter '", file[j].first, "' ", file[j].second.shape(), " that the module does not have");
  // 3. Copy: nothing below can fail.
  NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    std::memcpy(raw(params[i].second), raw(source[i]), nbytes(source[i]));
    params[i].second.bump_version();
  }
}

}  // namespace tapegrad::nn
