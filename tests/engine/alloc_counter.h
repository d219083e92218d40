// Counts calls of the global operator new in this test binary (defined in
// alloc_counter.cpp, which replaces the global allocation functions).
#pragma once

#include <cstddef>

namespace kiln::test {
size_t allocation_count();
}
