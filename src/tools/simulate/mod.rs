//! `knock simulate`: knock's own core (the same scheduler, classifier, shaping and
//! reaction code, from the same config file) on virtual time, against receivers modelled
//! after real ones (`tools::receiver`), described in a scenario file ([`scenario`]). It
//! answers "what happens to this traffic at these receivers with this configuration"
//! before a change is deployed, in seconds: per receiver, how much was delivered and how
//! fast against the ideal, how many attempts it took and how many were refused, how many
//! connections, and a per-minute timeline ([`report`]). [`replay`] makes a scenario out of
//! a recorded event log.

pub mod replay;
pub mod report;
pub mod scenario;
mod world;

use crate::config::Config;
use foldhash::HashMap;
use report::{Collector, Plan, Report};
use scenario::Scenario;
use std::time::{Duration, Instant};

pub use world::T0;

/// Runs `scenario` with `config`; `progress` hears (recipients finished, recipients) as it
/// goes.
pub fn run(
    scenario: &Scenario,
    config: &Config,
    progress: impl FnMut(u64, u64),
) -> anyhow::Result<Report> {
    config.validate()?;
    let started = Instant::now();
    let plan = Plan::new(scenario);
    let names: Vec<String> = scenario.receivers.keys().cloned().collect();
    let place_of: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .flat_map(|(i, name)| {
            scenario
                .traffic
                .to
                .iter()
                .filter(move |d| &d.receiver == name)
                .flat_map(move |d| scenario.domains_of(d, name))
                .map(move |domain| (domain, i))
        })
        .collect();
    let collect = Collector::new(names, plan.recipients());
    let world = world::World::new(scenario, config, &plan, collect)?;
    let until = scenario
        .simulation
        .until
        .unwrap_or(config.retry.max_age + Duration::from_secs(3600));
    // The ideal needs only the plan: it is worked out on the other core meanwhile.
    let (collect, ideal) = std::thread::scope(|s| {
        let ideal = s.spawn(|| report::ideal(scenario, &plan, &place_of));
        let collect = world.run(until, progress);
        (collect, ideal.join().expect("the ideal does not panic"))
    });
    Ok(Report::new(
        scenario,
        &plan,
        collect,
        ideal,
        started.elapsed(),
    ))
}
