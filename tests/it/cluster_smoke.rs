//! The test cluster itself: a primary, a streaming hot standby, and the controls that
//! later tests rely on.

use crate::common;
use pgsplit_cluster::{Cluster, ClusterOptions, Node};
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn writes_on_the_primary_are_read_on_the_replica() {
    let cluster = common::cluster();
    let primary = common::connect(&cluster.url(Node::Primary)).await;
    primary
        .batch_execute(
            "CREATE TABLE smoke (id int PRIMARY KEY, note text NOT NULL);
             INSERT INTO smoke VALUES (1, 'hello');",
        )
        .await
        .expect("create and fill a table on the primary as the app user");

    cluster.wait_caught_up().expect("replica catches up");

    let replica = common::connect(&cluster.url(Node::Replica)).await;
    let row = replica
        .query_one("SELECT note FROM smoke WHERE id = 1", &[])
        .await
        .expect("read the row on the replica");
    assert_eq!(row.get::<_, &str>(0), "hello");

    let in_recovery = "SELECT pg_is_in_recovery()";
    let on_primary: bool = primary.query_one(in_recovery, &[]).await.unwrap().get(0);
    let on_replica: bool = replica.query_one(in_recovery, &[]).await.unwrap().get(0);
    assert!(!on_primary, "the primary must not be in recovery");
    assert!(on_replica, "the replica must be in recovery");

    let err = replica
        .execute("INSERT INTO smoke VALUES (2, 'nope')", &[])
        .await
        .expect_err("a write on the hot standby must fail");
    assert_eq!(
        err.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );

    let streaming = cluster
        .psql(
            Node::Primary,
            "postgres",
            "SELECT state FROM pg_stat_replication",
        )
        .unwrap();
    assert_eq!(streaming, "streaming");
    assert_eq!(
        cluster
            .psql(Node::Replica, "app", "SELECT count(*) FROM smoke")
            .unwrap(),
        "1"
    );
}

/// On the replay cluster: a paused replica would hold back every test on the shared one.
#[tokio::test]
async fn paused_replay_holds_the_replica_behind() {
    let (cluster, _turn) = common::replay::replay_cluster().await;
    let primary = common::connect(&cluster.url(Node::Primary)).await;
    primary
        .batch_execute("CREATE TABLE lag (id int)")
        .await
        .unwrap();
    cluster.wait_caught_up().unwrap();

    cluster.pause_replay().unwrap();
    primary
        .batch_execute("INSERT INTO lag VALUES (1)")
        .await
        .unwrap();
    // Replay is paused, so the row cannot be there, however long we wait.
    let seen = cluster
        .psql(Node::Replica, "app", "SELECT count(*) FROM lag")
        .unwrap();
    cluster.resume_replay().unwrap();
    assert_eq!(seen, "0");

    cluster.wait_caught_up().unwrap();
    assert_eq!(
        cluster
            .psql(Node::Replica, "app", "SELECT count(*) FROM lag")
            .unwrap(),
        "1"
    );
}

/// Destructive, so on a cluster of its own; also checks odd credentials, extra settings
/// and that dropping the cluster cleans up.
#[tokio::test]
async fn failover_controls_and_cleanup() {
    let cluster = Cluster::start(ClusterOptions {
        user: "it's \"odd\"".to_owned(),
        password: "p@ss:w/rd'\"%?#".to_owned(),
        extra_conf: vec!["work_mem = '7MB'".to_owned()],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = cluster.dir().to_owned();

    let client = common::connect(&cluster.url(Node::Primary)).await;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, cluster.user());
    drop(client);
    for node in [Node::Primary, Node::Replica] {
        assert_eq!(cluster.psql(node, "app", "SHOW work_mem").unwrap(), "7MB");
    }

    cluster.stop(Node::Primary, true).unwrap();
    let err = cluster
        .psql(Node::Primary, "postgres", "SELECT 1")
        .expect_err("the primary is down");
    assert!(err.to_string().contains("psql"), "{err}");

    cluster.promote(Node::Replica).unwrap();
    assert_eq!(
        cluster
            .psql(Node::Replica, "postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    cluster
        .psql(Node::Replica, "app", "CREATE TABLE after_failover (id int)")
        .unwrap();

    cluster.start_node(Node::Primary).unwrap();
    assert_eq!(
        cluster.psql(Node::Primary, "postgres", "SELECT 1").unwrap(),
        "1"
    );

    drop(cluster);
    assert!(!dir.exists(), "{} survived the drop", dir.display());
}
