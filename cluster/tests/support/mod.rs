//! What the cluster's integration tests share.

use std::time::Duration;

use herald_cluster::node::ClusterConfig;
use herald_cluster::transport::LinkTimings;

/// Test settings for node `config.id`: a fixed election timeout, distinct per node (node 1
/// times out first, then 2, …), and links that reconnect within 20–200 ms.
pub(crate) fn distinct_timeouts_and_fast_links(config: &mut ClusterConfig) {
    let election_tick = config.driver.election_tick;
    config
        .driver
        .fixed_election_timeout(election_tick + 4 * config.id as usize);
    config.link_timings = LinkTimings {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..LinkTimings::default()
    };
}
