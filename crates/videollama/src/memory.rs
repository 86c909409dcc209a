//! Keeping the allocator from holding on to freed memory (glibc only).
//!
//! Loading a model allocates and frees many large temporaries (a dense weight before it is
//! quantized, a tensor's raw bytes before conversion). glibc's malloc raises its mmap
//! threshold after such frees, so later buffers of up to 32 MiB come from the heap and may
//! stay resident after they are freed. A trim after loading releases what the load left
//! behind. (Fixing the mmap threshold instead was measured: every large activation then
//! costs fresh zeroed pages, and the vision tower ran 30 % slower.)

/// Give freed heap memory back to the kernel (after loading a model).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator no longer uses.
    unsafe {
        libc::malloc_trim(0);
    }
}
