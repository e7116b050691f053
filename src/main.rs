use clap::Parser;

fn main() -> std::process::ExitCode {
    ollama_tools::cli::run(ollama_tools::cli::Cli::parse())
}
