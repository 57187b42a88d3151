//! `fanout`: one publisher, one topic, many subscribers (10,000+ by default), with client connections spread
//! over 127.0.0.x source addresses so one source address's ephemeral ports do not run out.

use super::Ctx;
use super::e2e::{FlowPlan, run_flow};
use crate::cli::{FanoutArgs, TopicMode};
use crate::report::Report;

/// Source addresses used when `--source-ips` is left at 0: 10,000+ connections need more than one.
const DEFAULT_SOURCE_IPS: u8 = 16;

/// Runs `fanout`: the `e2e` flow shaped as 1 publisher → 1 topic → N subscribers.
pub async fn run(ctx: &Ctx, args: FanoutArgs) -> anyhow::Result<Report> {
    let mut flow = args.flow;
    if flow.source_ips == 0 {
        flow.source_ips = DEFAULT_SOURCE_IPS;
    }
    let plan = FlowPlan {
        publishers: 1,
        subscribers: args.subscribers,
        topics: 1,
        messages: args.messages,
        topic_mode: TopicMode::Fixed,
        slow: None,
        flow,
    };
    run_flow(ctx, "fanout", plan).await
}
