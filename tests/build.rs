//! Which end-to-end tests cannot run on this machine, decided when the tests
//! are built, so that they show as *skipped* in nextest's summary (ignored,
//! with the reason) instead of passing without doing anything:
//! `PESC_SKIP_DOCKER`, `PESC_SKIP_BROWSER`, `PESC_SKIP_NETNS`,
//! `PESC_SKIP_SCHEMATHESIS`, `PESC_SKIP_TORCH`, and tests that need a root node. Without a skip
//! variable a missing tool still fails its test loudly.

fn main() {
    for (var, cfg) in [
        ("PESC_SKIP_DOCKER", "pesc_skip_docker"),
        ("PESC_SKIP_BROWSER", "pesc_skip_browser"),
        ("PESC_SKIP_NETNS", "pesc_skip_netns"),
        ("PESC_SKIP_SCHEMATHESIS", "pesc_skip_schemathesis"),
        ("PESC_SKIP_TORCH", "pesc_skip_torch"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var_os(var).is_some() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    println!("cargo::rustc-check-cfg=cfg(pesc_not_root)");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("cargo::rustc-cfg=pesc_not_root");
    }
}
