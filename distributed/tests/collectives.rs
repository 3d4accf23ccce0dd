//! Two real processes over c10d's TCPStore and Gloo: each test re-runs this test binary as rank 0
//! and rank 1 (the `RLHF_TEST_ROLE` variable says which part of the test a child plays).
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One multi-process test at a time: on a 2-core machine, concurrent ones would starve each
/// other's ranks and trip the short timeouts these tests use on purpose.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` of this binary as `world` ranks; returns their outputs in rank order.
fn spawn_ranks(test: &str, world: usize, timeout_s: &str) -> Vec<Output> {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(std::env::current_exe().unwrap())
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env("RLHF_TEST_ROLE", "rank")
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RLHF_DIST_TIMEOUT", timeout_s)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn is_rank() -> bool {
    std::env::var("RLHF_TEST_ROLE").is_ok()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

#[test]
fn every_collective_gives_the_reduced_values_on_two_ranks() {
    if !is_rank() {
        for (r, o) in spawn_ranks("every_collective_gives_the_reduced_values_on_two_ranks", 2, "60").iter().enumerate() {
            assert!(o.status.success(), "rank {r} failed:\n{}", text(o));
        }
        return;
    }
    let d = distributed::init_from_env().unwrap().expect("launched as a rank");
    let (r, w) = (d.rank, d.world_size);
    assert_eq!(w, 2);
    // all_reduce: sum, max, min, and f64 scalars.
    let t = Tensor::from_slice(&[1.0f32 + r as f32, 10.0 * (r as f32 + 1.0), -3.0]);
    d.all_reduce(&t, distributed::ReduceOp::Sum).unwrap();
    assert_eq!(values(&t), [3.0, 30.0, -6.0]);
    let t = Tensor::from_slice(&[r as f32, -(r as f32)]);
    d.all_reduce(&t, distributed::ReduceOp::Max).unwrap();
    assert_eq!(values(&t), [1.0, 0.0]);
    let mut s = [0.5 + r as f64, 1e-300];
    d.all_reduce_f64(&mut s).unwrap();
    assert_eq!(s, [2.0, 2e-300]);
    // broadcast from rank 1.
    let t = if r == 1 { Tensor::from_slice(&[7.0f32, 8.0]) } else { Tensor::zeros([2], (Kind::Float, Device::Cpu)) };
    d.broadcast(&t, 1).unwrap();
    assert_eq!(values(&t), [7.0, 8.0]);
    // all_gather into views of one flat buffer (how ZeRO gathers shards).
    let flat = Tensor::zeros([6], (Kind::Float, Device::Cpu));
    let outs: Vec<Tensor> = (0..w).map(|i| flat.narrow(0, i * 3, 3)).collect();
    let mine = Tensor::from_slice(&[r as f32, r as f32 + 0.5, 100.0 + r as f32]);
    d.all_gather(&outs, &mine).unwrap();
    assert_eq!(values(&flat), [0.0, 0.5, 100.0, 1.0, 1.5, 101.0]);
    // reduce_scatter: rank i gets the sum of everyone's inputs[i].
    let inputs: Vec<Tensor> = (0..w).map(|i| Tensor::from_slice(&[(10 * i + r) as f32, 1.0])).collect();
    let out = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    d.reduce_scatter(&out, &inputs).unwrap();
    assert_eq!(values(&out), [(20 * r + 1) as f32, 2.0]);
    // bf16 goes through as well.
    let t = Tensor::from_slice(&[1.5f32, 2.0]).to_kind(Kind::BFloat16);
    d.all_reduce(&t, distributed::ReduceOp::Sum).unwrap();
    assert_eq!(values(&t), [3.0, 4.0]);
    // bytes of different lengths.
    let got = d.all_gather_bytes(format!("rank-{r}{}", "x".repeat(r as usize * 5)).as_bytes()).unwrap();
    assert_eq!(got, [b"rank-0".to_vec(), b"rank-1xxxxx".to_vec()]);
    d.barrier().unwrap();
    assert!(d.leader_pid() > 0);
}

#[test]
fn a_rank_that_dies_is_named_by_the_survivor_within_the_timeout() {
    if !is_rank() {
        let t0 = Instant::now();
        let outs = spawn_ranks("a_rank_that_dies_is_named_by_the_survivor_within_the_timeout", 2, "20");
        assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
        assert_eq!(outs[1].status.code(), Some(3), "{}", text(&outs[1]));
        let t = text(&outs[0]);
        assert!(!outs[0].status.success(), "rank 0 did not fail:\n{t}");
        assert!(t.contains("rank 0: all_reduce") && t.contains("rank 1 has stopped"), "rank 0's error does not name rank 1:\n{t}");
        return;
    }
    let d = distributed::init_from_env().unwrap().unwrap();
    d.barrier().unwrap();
    if d.rank == 1 {
        std::process::exit(3);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let err = d.all_reduce(&t, distributed::ReduceOp::Sum).unwrap_err();
    panic!("{err}");
}

#[test]
fn a_hung_rank_is_named_when_the_timeout_passes() {
    if !is_rank() {
        let t0 = Instant::now();
        let outs = spawn_ranks("a_hung_rank_is_named_when_the_timeout_passes", 2, "8");
        let t = text(&outs[0]);
        assert!(!outs[0].status.success(), "rank 0 did not fail:\n{t}");
        assert!(t.contains("rank 1 is alive but behind"), "rank 0's error does not name the hung rank 1:\n{t}");
        assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
        return;
    }
    let d = distributed::init_from_env().unwrap().unwrap();
    d.barrier().unwrap();
    if d.rank == 1 {
        // Hung in "compute": alive (its heartbeat goes on) but never reaches the next collective.
        std::thread::sleep(Duration::from_secs(25));
        std::process::exit(0);
    }
    let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let err = d.all_reduce(&t, distributed::ReduceOp::Sum).unwrap_err();
    panic!("{err}");
}
