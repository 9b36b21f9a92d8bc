//! pesc-sim: a discrete-event, seeded, single-threaded simulator that runs the
//! protocol crate's own scheduling and lease code on thousands of virtual
//! nodes over a simulated network, and reports makespan, duplicate work,
//! failover times, claim conflicts, traffic and fairness.

pub mod backups;
pub mod churn;
pub mod engine;
pub mod exact;
pub mod metrics;
pub mod net;
pub mod overlay;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod scenarios;
pub mod sizes;
pub mod svg;
pub mod table;
pub mod view;
pub mod yardstick;

/// Runs one scenario to its end.
pub fn run(sc: scenario::Scenario) -> report::Report {
    engine::Sim::new(sc).run()
}
