//! `rootfs-cache`: the command-line interface, thin over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // One line, like every other error; `--help` has the rest.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("error: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<rootfs_cache::Error>().map_or(1, rootfs_cache::Error::exit_code);
            // One line: the error and its causes.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    };
    // Every cleanup the request started has been awaited. A blocking thread
    // still running now was abandoned (a conversion past its timeout, a
    // read stuck in the kernel): the answer is out, so the process does not
    // wait for it past a grace period (dropping the runtime would, forever).
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    code
}

/// How long the CLI waits, once it has answered, for abandoned blocking
/// threads before it exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
