#pragma once
// Saving and loading parameters in NumPy's formats, so Python can read what C++ trained:
//   .npy  one array (NumPy format 1.0 header, little-endian, C order)
//   .npz  a zip of .npy entries named "<parameter path>.npy", stored uncompressed with CRC-32,
//         as np.savez writes them (np.load(path)["layers.0.W"] works).
// Loading a module is all or nothing: every name, shape and dtype is checked and every value is
// read into temporaries before the first parameter is overwritten, so a mismatch or a truncated
// file throws tapegrad::Error and leaves the module unchanged.
#include <string>
#include <vector>

#include "module.hpp"

namespace tapegrad::nn {

void save_npy(const Tensor& t, const std::string& path);
Tensor load_npy(const std::string& path);

void write_npz(const std::string& path, const std::vector<NamedTensor>& arrays);
std::vector<NamedTensor> read_npz(const std::string& path);  // in file order

// The module's named_parameters() to/from an .npz file.
void save(const Module& m, const std::string& path);
void load(Module& m, const std::string& path);

// The zip CRC-32 (polynomial 0xEDB88320), exposed for tests.
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace tapegrad::nn
