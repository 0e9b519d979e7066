//! `tug completions SHELL`: the shell completion script, generated from the same definitions as
//! `--help`.

/// Arguments of `tug completions`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug completions bash > /etc/bash_completion.d/tug\n  \
    tug completions zsh > \"${fpath[1]}/_tug\"\n  tug completions fish > ~/.config/fish/completions/tug.fish")]
pub struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the script for `shell` to stdout.
pub fn run(a: CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<()> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "tug", &mut script);
    match std::io::stdout().write_all(&script) {
        // `tug completions bash | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
