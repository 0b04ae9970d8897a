//! Store benches: write + commit (flush + fdatasync) by batch size — the group commit.
//! `cargo bench --bench store`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use posbridge::api::{ErrorCode, Rejection, ResultMsg};
use posbridge::store::{OutMsg, Store};

fn store(c: &mut Criterion) {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let store = match rt.block_on(async { Store::open(dir.path()) }) {
        Ok((s, _)) => s,
        Err(e) => panic!("store: {e}"),
    };
    let msg = {
        let mut rej =
            Rejection::new(ErrorCode::Busy, "terminal ip-1 already has 16 commands queued");
        rej.id = Some("bench-0001".into());
        OutMsg::result(&ResultMsg::rejected(&rej))
    };
    let mut g = c.benchmark_group("store_write_commit");
    g.sample_size(20);
    for batch in [1usize, 16, 64, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch {batch}"), |b| {
            b.iter_batched(
                || vec![msg.clone(); batch],
                |msgs| {
                    rt.block_on(async {
                        for m in msgs {
                            let _ = store.write(&[], &[m]);
                        }
                        let _ = store.commit().await;
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
