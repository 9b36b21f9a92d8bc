//! The run header: the argument list and environment every run is started with.
//!
//! `ENTRY --app_dir D --checkpoint_dir C --output_dir O --rank R --world_size N
//! --master_addr A --master_port P --parameters p1 p2 …` (PESC), plus the same
//! facts in the environment as `PESC_*` and torchrun's names.

/// Default rendezvous port handed to ranks (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Everything the header says about one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    pub app_dir: String,
    pub checkpoint_dir: String,
    pub output_dir: String,
    pub rank: u32,
    pub world_size: u32,
    pub master_addr: String,
    pub master_port: u16,
    /// The rank among the ranks on its node, and how many there are
    /// (torchrun's `LOCAL_RANK`, `LOCAL_WORLD_SIZE`): 0 and 1 but for a
    /// parallel request with several ranks on one node.
    pub local_rank: u32,
    pub local_world_size: u32,
    pub parameters: Vec<String>,
    pub request_id: String,
    pub attempt: u32,
    pub node_id: String,
}

/// PESC's header arguments, in PESC's order. `--parameters` is always last so a
/// program can take everything after it.
pub fn header_args(ctx: &RunContext) -> Vec<String> {
    let mut v = vec![
        "--app_dir".to_string(),
        ctx.app_dir.clone(),
        "--checkpoint_dir".to_string(),
        ctx.checkpoint_dir.clone(),
        "--output_dir".to_string(),
        ctx.output_dir.clone(),
        "--rank".to_string(),
        ctx.rank.to_string(),
        "--world_size".to_string(),
        ctx.world_size.to_string(),
        "--master_addr".to_string(),
        ctx.master_addr.clone(),
        "--master_port".to_string(),
        ctx.master_port.to_string(),
        "--parameters".to_string(),
    ];
    v.extend(ctx.parameters.iter().cloned());
    v
}

/// The environment of a run: `PESC_*` and torchrun's `RANK WORLD_SIZE
/// LOCAL_RANK MASTER_ADDR MASTER_PORT`.
pub fn header_env(ctx: &RunContext) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    vec![
        kv("PESC_APP_DIR", ctx.app_dir.clone()),
        kv("PESC_CHECKPOINT_DIR", ctx.checkpoint_dir.clone()),
        kv("PESC_OUTPUT_DIR", ctx.output_dir.clone()),
        kv("PESC_RANK", ctx.rank.to_string()),
        kv("PESC_WORLD_SIZE", ctx.world_size.to_string()),
        kv("PESC_MASTER_ADDR", ctx.master_addr.clone()),
        kv("PESC_MASTER_PORT", ctx.master_port.to_string()),
        // Parameters as one line for shells; programs wanting exact words use argv.
        kv("PESC_PARAMETERS", ctx.parameters.join(" ")),
        kv("PESC_REQUEST_ID", ctx.request_id.clone()),
        kv("PESC_ATTEMPT", ctx.attempt.to_string()),
        kv("PESC_NODE_ID", ctx.node_id.clone()),
        kv(
            crate::progress::ENV,
            format!("{}/{}", ctx.app_dir, crate::progress::FILE_NAME),
        ),
        kv("RANK", ctx.rank.to_string()),
        kv("WORLD_SIZE", ctx.world_size.to_string()),
        kv("LOCAL_RANK", ctx.local_rank.to_string()),
        kv("LOCAL_WORLD_SIZE", ctx.local_world_size.to_string()),
        kv("MASTER_ADDR", ctx.master_addr.clone()),
        kv("MASTER_PORT", ctx.master_port.to_string()),
    ]
}

/// Whether the node inserts PESC's header into a Python or R program that
/// does not read PESC's arguments itself (the thesis's behaviour).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HeaderMode {
    /// When the program reads no arguments (no argparse, `sys.argv`,
    /// `--rank`, `commandArgs`…).
    #[default]
    Auto,
    /// Never: the program runs as written.
    Never,
}

/// The first line of an inserted header: a program that has it is never
/// given a second.
pub const HEADER_MARK: &str = "PESC header (inserted by the node";

const PYTHON_HEADER: &str = r#"# --- PESC header (inserted by the node: the program reads no arguments; --header never turns it off) ---
import argparse as _pesc_argparse
_pesc_parser = _pesc_argparse.ArgumentParser(add_help=False)
_pesc_parser.add_argument("--app_dir", default=".")
_pesc_parser.add_argument("--checkpoint_dir", default="checkpoint")
_pesc_parser.add_argument("--output_dir", default="output")
_pesc_parser.add_argument("--rank", type=int, default=0)
_pesc_parser.add_argument("--world_size", type=int, default=1)
_pesc_parser.add_argument("--master_addr", default="127.0.0.1")
_pesc_parser.add_argument("--master_port", type=int, default=29500)
_pesc_parser.add_argument("--parameters", nargs="*", default=[])
args, _ = _pesc_parser.parse_known_args()
del _pesc_argparse, _pesc_parser
# --- end of the PESC header ---
"#;

const R_HEADER: &str = r#"# --- PESC header (inserted by the node: the program reads no arguments; --header never turns it off) ---
args <- local({
  a <- commandArgs(trailingOnly = TRUE)
  get <- function(name, default) {
    i <- match(paste0("--", name), a)
    if (is.na(i) || i == length(a)) default else a[[i + 1]]
  }
  p <- match("--parameters", a)
  list(
    app_dir = get("app_dir", "."),
    checkpoint_dir = get("checkpoint_dir", "checkpoint"),
    output_dir = get("output_dir", "output"),
    rank = as.integer(get("rank", "0")),
    world_size = as.integer(get("world_size", "1")),
    master_addr = get("master_addr", "127.0.0.1"),
    master_port = as.integer(get("master_port", "29500")),
    parameters = if (is.na(p) || p == length(a)) character(0) else a[(p + 1):length(a)]
  )
})
# --- end of the PESC header ---
"#;

/// The program with PESC's header inserted, when it needs one: a Python or
/// R program that reads no arguments and has no header yet. Python's goes
/// after a shebang, an encoding line, the module docstring's start and any
/// `from __future__` import (which must come first).
pub fn with_header(language: crate::model::Language, source: &str) -> Option<String> {
    use crate::model::Language;
    if source.contains(HEADER_MARK) {
        return None;
    }
    let (header, reads_args): (&str, &[&str]) = match language {
        Language::Python => (
            PYTHON_HEADER,
            &[
                "argparse", "sys.argv", "--rank", "getopt", "click", "typer", "docopt", "fire.",
            ],
        ),
        Language::R => (R_HEADER, &["commandArgs", "--rank", "optparse", "argparse"]),
        _ => return None,
    };
    if reads_args.iter().any(|w| source.contains(w)) {
        return None;
    }
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    let mut at = 0;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let keep = (i == 0 && t.starts_with("#!"))
            || (i < 2 && t.starts_with('#') && t.contains("coding"))
            || (language == Language::Python && t.starts_with("from __future__"));
        if keep {
            at = i + 1;
        }
    }
    let mut out = String::with_capacity(source.len() + header.len() + 1);
    for l in &lines[..at] {
        out.push_str(l);
    }
    if at > 0 && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(header);
    for l in &lines[at..] {
        out.push_str(l);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RunContext {
        RunContext {
            app_dir: "/w/app".into(),
            checkpoint_dir: "/w/app/checkpoint".into(),
            output_dir: "/w/app/output".into(),
            rank: 3,
            world_size: 10,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            local_rank: 0,
            local_world_size: 1,
            parameters: vec!["alpha".into(), "0.5".into()],
            request_id: "00112233445566ff".into(),
            attempt: 1,
            node_id: "n1".into(),
        }
    }

    #[test]
    fn args_are_pesc_order() {
        let a = header_args(&ctx()).join(" ");
        assert_eq!(
            a,
            "--app_dir /w/app --checkpoint_dir /w/app/checkpoint --output_dir /w/app/output \
             --rank 3 --world_size 10 --master_addr 127.0.0.1 --master_port 29500 \
             --parameters alpha 0.5"
        );
    }

    #[test]
    fn env_has_pesc_and_torchrun_names() {
        let env = header_env(&ctx());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PESC_RANK"), Some("3"));
        assert_eq!(get("RANK"), Some("3"));
        assert_eq!(get("WORLD_SIZE"), Some("10"));
        assert_eq!(get("LOCAL_RANK"), Some("0"));
        assert_eq!(get("MASTER_ADDR"), Some("127.0.0.1"));
        assert_eq!(get("MASTER_PORT"), Some("29500"));
        assert_eq!(get("PESC_PARAMETERS"), Some("alpha 0.5"));
    }

    #[test]
    fn the_header_goes_into_python_and_r_programs_that_read_no_arguments_once() {
        use crate::model::Language;
        let py = "#!/usr/bin/env python3\nfrom __future__ import annotations\nprint(args.rank)\n";
        let got = with_header(Language::Python, py).unwrap();
        assert!(got.starts_with(
            "#!/usr/bin/env python3\nfrom __future__ import annotations\n# --- PESC header"
        ));
        assert!(got.ends_with("print(args.rank)\n"));
        assert_eq!(with_header(Language::Python, &got), None, "never twice");
        let own = "import argparse\np = argparse.ArgumentParser()\n";
        assert_eq!(with_header(Language::Python, own), None);
        let r = "cat(args$rank, \"\\n\")\n";
        let got = with_header(Language::R, r).unwrap();
        assert!(got.starts_with("# --- PESC header") && got.contains("args <- local("));
        assert_eq!(with_header(Language::R, "a <- commandArgs()\n"), None);
        assert_eq!(with_header(Language::Shell, "echo $PESC_RANK\n"), None);
    }
}
