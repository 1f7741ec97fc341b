//! `gustavo completion bash|zsh|fish`: a completion script for the shell, from the same
//! clap definition the binary parses with, so it never falls behind the commands.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn run(shell: Shell) {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "gustavo", &mut out);
    outln!("{}", String::from_utf8_lossy(&out).trim_end());
}
