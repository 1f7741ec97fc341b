//! Micro-benchmarks of the hot paths (issue 4): desired state for a group of 100,000 nodes,
//! content hashing, and placing 1,000,000 replicas over 100,000 nodes.
//! Run: `cargo bench -p gustavo-model`. Figures are recorded in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gustavo_model::api::{DesiredApp, DesiredContainer, DesiredState};
use gustavo_model::desired::{NodeFacts, container_name, expand};
use gustavo_model::schedule::{Liveness, NodeView, Usage, Want, Weights, place};
use gustavo_model::spec::parse_one;

const SEED: &str = r#"test_linreg:
    docker_image: "172.31.17.1:5000/test_linreg"
    env_vars: {CACHE: "64", NETRESTRICT: "0.0.0.0/0", WHERE: "{{node.name}}"}
    volumes: ["/tmp/:/tmp/1", "/var/tmp/:/var/tmp/1:rw"]
    starting_ports: [{9000: 9000}, {30303: 30303}]
    networks: ["nebula"]
    rolling_restart: True
    containers_per: {server: 1}
"#;

fn nodes(n: usize) -> Vec<NodeFacts> {
    (0..n)
        .map(|i| NodeFacts {
            name: format!("node-{i:06}"),
            cpus: 4,
            memory_mb: 1024,
            labels: BTreeMap::from([("site".to_string(), format!("s{}", i % 100))]),
        })
        .collect()
}

/// What the server does per node when an app on a group changes: expand the app for the
/// node, hash each container spec, and serialize the node's desired state.
fn desired_json(app: &str, spec: &gustavo_model::AppSpec, node: &NodeFacts) -> Vec<u8> {
    let state = DesiredState {
        node: node.name.clone(),
        revision: 7,
        apps: vec![DesiredApp {
            name: app.to_string(),
            revision: 7,
            rolling_restart: spec.rolling_restart,
            priority: 0,
            critical: false,
            leased: false,
            containers: expand(app, spec, 0, node)
                .into_iter()
                .map(|c| DesiredContainer {
                    name: container_name(&node.name, app, c.replica),
                    hash: c.hash(),
                    spec: c,
                })
                .collect(),
            template: None,
            replicas: Vec::new(),
        }],
        jobs: Vec::new(),
        exec: Vec::new(),
        pressure: None,
        tunnel: None,
        labels: Default::default(),
    };
    serde_json::to_vec(&state).expect("serializes")
}

fn desired_state(c: &mut Criterion) {
    let spec = parse_one(SEED, "test_linreg").unwrap();
    let fleet = nodes(100_000);
    let mut g = c.benchmark_group("desired_state");
    g.sample_size(10);
    g.bench_function("one_node", |b| {
        b.iter(|| black_box(desired_json("test_linreg", &spec, &fleet[0])))
    });
    g.bench_function("group_of_100k_nodes", |b| {
        b.iter(|| {
            let bytes: usize = fleet
                .iter()
                .map(|n| desired_json("test_linreg", &spec, n).len())
                .sum();
            black_box(bytes)
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let spec = parse_one(SEED, "test_linreg").unwrap();
    let container = expand("test_linreg", &spec, 0, &nodes(1)[0]).remove(0);
    c.bench_function("content_hash/container_spec", |b| {
        b.iter(|| black_box(container.hash()))
    });
}

fn placement(c: &mut Criterion) {
    let groups = vec!["fleet".to_string()];
    let fleet: Vec<NodeView> = (0..100_000)
        .map(|i| NodeView {
            name: format!("node-{i:06}"),
            groups: groups.clone(),
            labels: BTreeMap::new(),
            cpus: 4,
            memory_mb: 4096,
            usage: Some(Usage {
                cpu_percent: (i % 7) as f64 * 10.0,
                memory_free_mb: 4096 - (i as u64 % 5) * 128,
                disk_free_mb: 10_240,
            }),
            liveness: Liveness::Ready,
            cordoned: i % 50 == 0,
            draining: false,
            pressure: Default::default(),
            agentless: false,
        })
        .collect();
    let selector = BTreeMap::new();
    let want = Want {
        groups: &groups,
        replicas: 1_000_000,
        max_per_node: 20,
        selector: &selector,
    };
    let mut g = c.benchmark_group("placement");
    g.sample_size(10);
    g.bench_function("1M_replicas_over_100k_nodes", |b| {
        b.iter(|| {
            let p = place(&want, &BTreeMap::new(), &fleet, &Weights::default());
            assert_eq!(p.len(), 1_000_000);
            black_box(p)
        })
    });
    g.finish();
}

criterion_group!(benches, desired_state, hashing, placement);
criterion_main!(benches);
