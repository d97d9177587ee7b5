//! Writes astban's man page and shell completions into a directory, from
//! the same clap definition the binary parses (`astban::cli`), so they
//! cannot drift from what `astban --help` says.
//!
//! `cargo run --example gen-docs -- target/assets` writes `astban.1`
//! (with one `astban-<command>.1` per subcommand), `astban.bash` and
//! `_astban` (zsh); the Debian package ships them (Cargo.toml,
//! `[package.metadata.deb]`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs DIR");
        return ExitCode::from(2);
    };
    match generate(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut command = astban::cli::command();
    // `man astban` gives the overview and lists the commands;
    // `man astban-run` and so on give each command's options.
    clap_mangen::generate_to(command.clone(), dir)?;
    for (shell, file) in [(Shell::Bash, "astban.bash"), (Shell::Zsh, "_astban")] {
        let mut out = std::fs::File::create(dir.join(file))?;
        clap_complete::generate(shell, &mut command, "astban", &mut out);
    }
    Ok(())
}
