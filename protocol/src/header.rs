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
}
