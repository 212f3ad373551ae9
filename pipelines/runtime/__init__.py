"""The process: device and precision, threads, memory allocator, distributed ranks."""
