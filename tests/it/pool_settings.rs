//! Settings under transaction pooling: a connection keeps the settings its
//! last client gave it, and the next client changes only what differs
//! (`backend::settings`), with no `DISCARD ALL` in between.

use crate::common::{Proxy, cluster, connect};

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(
            &format!("/* pgsplit:primary */ SELECT current_setting('{name}')"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// One connection, two clients with different settings taking turns: each
/// sees only its own, and a statement prepared between them stays prepared
/// (the connection was never reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_taking_turns_on_one_connection_each_see_their_own_settings() {
    let c = cluster();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 1\n").await;
    let url = proxy.url(c);
    let a = connect(&url).await;
    let b = connect(&url).await;
    let default_work_mem = show(&b, "work_mem").await;
    a.batch_execute("SET work_mem = '7MB'; ").await.unwrap();
    a.batch_execute("SET statement_timeout = '12s'")
        .await
        .unwrap();
    let text = "/* pgsplit:primary */ SELECT 1 + $1::int /* txsettings-kept */";
    let s = a.prepare(text).await.unwrap();
    let n: i32 = a.query_one(&s, &[&1i32]).await.unwrap().get(0);
    assert_eq!(n, 2);
    b.batch_execute("SET search_path TO pg_catalog, public")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&a, "work_mem").await, "7MB");
        assert_eq!(show(&a, "statement_timeout").await, "12s");
        assert_eq!(show(&a, "search_path").await, "\"$user\", public");
        assert_eq!(show(&b, "work_mem").await, default_work_mem);
        assert_eq!(show(&b, "statement_timeout").await, "0");
        assert_eq!(show(&b, "search_path").await, "pg_catalog, public");
    }
    let kept: i64 = b
        .query_one(
            "/* pgsplit:primary */ SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            &[&text],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the connection was reset between the clients");
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(&a, "work_mem").await, default_work_mem);
    assert_eq!(show(&b, "search_path").await, "pg_catalog, public");
    proxy.stop().await;
}

/// The same on the replica, where reads take the difference in their own
/// flight (no round trip of its own): each client still sees only its own
/// settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_of_clients_taking_turns_see_their_own_settings() {
    let c = cluster();
    let proxy = Proxy::start(c, "[pool]\nmode = \"transaction\"\nmax_size = 1\n").await;
    let url = proxy.url(c);
    let a = connect(&url).await;
    let b = connect(&url).await;
    a.batch_execute("SET work_mem = '9MB'").await.unwrap();
    b.batch_execute("SET work_mem = '3MB'").await.unwrap();
    let read = "SELECT current_setting('work_mem'), inet_server_port()";
    let replica = i32::from(c.port(pgsplit_cluster::Node::Replica));
    for _ in 0..5 {
        for (client, want) in [(&a, "9MB"), (&b, "3MB")] {
            let row = client.query_one(read, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), want);
            assert_eq!(row.get::<_, i32>(1), replica, "a read on the replica");
            let rows = client.simple_query(read).await.unwrap();
            let got = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(got.as_deref(), Some(want));
        }
    }
    proxy.stop().await;
}
