//! `videollama`: ask questions about videos and images with VideoLLaMA2 checkpoints.
//!
//! Commands: `ask`, `caption`, `chat`, `inspect`. Every error is printed as one
//! message naming the file and the cause, with exit status 1.

mod bench;
mod bench_stream;
mod cli;
mod default_model;
mod demo_eval;
mod eval;
mod init_model;
mod memory;
mod quantize;
mod train_tower;

fn main() -> std::process::ExitCode {
    memory::configure_allocator();
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
