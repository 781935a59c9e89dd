//! What the CLI shows on a terminal, shared by its commands.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runnel_proto::serving::v1 as proto;

/// A progress bar of `total` events on stderr, hidden when stderr is not a terminal; `{msg}`
/// follows the counts.
pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let progress = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, eta {eta}) {msg}")
    {
        progress.set_style(style);
    }
    progress
}

/// Which view answered a window, as the CLI prints it.
pub(crate) fn source_name(window: &proto::WindowResult) -> &'static str {
    match window.source() {
        proto::ViewSource::Batch => "batch",
        proto::ViewSource::Speed => "speed",
        proto::ViewSource::Unspecified => "?",
    }
}
