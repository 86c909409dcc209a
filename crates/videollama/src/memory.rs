//! Keeping the allocator from holding on to freed memory (glibc only).
//!
//! Loading a model allocates and frees many large temporaries (a dense weight before it is
//! quantized, a tensor's raw bytes before conversion). glibc's malloc raises its mmap
//! threshold after such frees, so later buffers of up to 32 MiB come from the heap and stay
//! resident after they are freed — the process's RSS then counts garbage. A fixed threshold
//! returns every large buffer to the kernel on free, and a trim after loading releases what
//! the load left behind.

/// Called once at start-up, before anything large is allocated.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain glibc tuning calls with constant arguments.
    unsafe {
        // Buffers of 4 MiB and more are mmapped (and unmapped on free); fixing the value
        // also turns off glibc's dynamic raising of the threshold.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Give freed heap memory back to the kernel (after loading a model).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator no longer uses.
    unsafe {
        libc::malloc_trim(0);
    }
}
