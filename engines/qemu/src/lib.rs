//! hvtrace's QEMU engine, host side: QEMU TCG started with the hvtrace
//! plugin (`tcg-plugin/`), which traces inside QEMU. `qemu` spawns QEMU,
//! watches its console and always reaps it; `plugin` finds the plugin and
//! hands it the probe plan file; `summary` says what the plugin's report
//! (`plugin.json`) says after a run; `bench` is `hvtrace bench trace`'s
//! measurement (both engines against untraced runs, and the gdbstub peer).

pub mod bench;
pub mod plugin;
pub mod qemu;
pub mod seam;
pub mod summary;
