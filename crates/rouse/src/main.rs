//! `rouse`: the command line and the whole platform in one binary.

fn main() -> std::process::ExitCode {
    rouse::cli::main()
}
