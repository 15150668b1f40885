//! The harness itself: a start that lost a port is told apart from a server that failed, so
//! the harness can start again on fresh ports instead of failing the test by luck.

use std::net::TcpListener;
use std::time::Duration;

use crate::support::cluster::{ClusterOptions, Node, FORM_DEADLINE};
use crate::support::ports::free_ports;
use crate::support::within;

#[tokio::test]
async fn a_start_whose_port_is_taken_is_reported_as_lost_not_failed() {
    within(Duration::from_secs(90), async {
        // Someone else listens on the Raft address the node is given.
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let raft = taken.local_addr().expect("its address");
        let ports = free_ports(2);
        let mut node = Node::new(
            1,
            [ports[0], ports[1], raft],
            None,
            "e2e-admin-port-taken".into(),
            ClusterOptions::default(),
        );
        node.spawn();
        assert!(
            node.wait_bound(FORM_DEADLINE).await.is_err(),
            "the node's start is reported as a lost port"
        );
        assert!(!node.is_running());
    })
    .await;
}
