//! `pesc-sandbox SPEC`: the sandbox launcher on its own, a small binary the
//! node starts for every run (quicker to start than the whole `pesc`, which
//! can do the same with `pesc __sandbox-exec SPEC`). Not for users: the node
//! writes the spec.

#[allow(dead_code)]
#[path = "../executor/sandbox"]
mod sandbox {
    pub mod landlock_rules;
    pub mod launch;
    pub mod rootfs;
    pub mod slot_server;
    pub mod spec;
    pub mod start;
}

fn main() {
    let spec = std::env::args_os().nth(1).unwrap_or_default();
    sandbox::launch::main(&spec)
}
