//! N tollgate replicas sharing one limit per client in `lease` mode,
//! simulated: what leasing costs in accuracy, in Redis operations and in
//! tokens a crash strands, for 3 to 1000 replicas and three traffic
//! shapes.
//!
//! `cargo run --release --example replica_sim` prints one Markdown table
//! (docs/operations.md, "How far leases scale", publishes it).
//!
//! Deterministic: a simulated clock (an event queue in nanoseconds) and a
//! seeded generator; the one `Instant::now()` is only the origin that the
//! lease rules' `Instant`s are offsets from. Each replica runs the crate's
//! own lease rules (`tollgate::limiter::shared::lease::LeaseState`: demand
//! over the last second, `max_lease`, prefetch, refusing locally until
//! Redis said) exactly as `SharedLimiter` drives them; Redis is the lease
//! and give-back scripts' GCRA, run when a call reaches it, half a round
//! trip after it was sent. Checks of one client that find its lease empty
//! while a lease request is in flight wait for its answer, as they do on
//! the lease's lock.
//!
//! What it counts:
//! - accuracy: admitted against `exact`, one GCRA bucket per client
//!   deciding every request when it arrives (what `mode: exact` on a
//!   Redis without latency would admit; for a client flooding from a full
//!   bucket, `capacity + rate × t`). "Worst client" is the largest
//!   difference of one client, in tokens;
//! - Redis operations: lease requests (on demand and ahead of need),
//!   give-backs (one call per sweep that returns anything) and heartbeats
//!   (one a second per replica), per second;
//! - a crash: every 97 ms, what replica 0 holds (leased and unspent, and
//!   grants on their way to it): the tokens that a `kill -9` then would
//!   strand, their mean and maximum over the run, and the most of one
//!   client's capacity.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use tollgate::limiter::shared::lease::{max_lease, Grant, LeaseLimits, LeaseState, Local};
use tollgate::limiter::shared::{HEARTBEAT, IDLE_RETURN};

/// Every client's limit: the three-replica flood test's (capacity 20,
/// 50 tokens a second).
const CAPACITY: u32 = 20;
const RATE: f64 = 50.0;
/// `rate_limit.refill_interval`: how often a refused replica asks, and
/// how often the upkeep sweeps idle leases.
const PERIOD: Duration = Duration::from_millis(100);
/// Redis's round trip (loopback on this box is 0.1-0.3 ms with a busy
/// tokio runtime around it).
const RTT_NS: u64 = 250_000;
const SECONDS: f64 = 10.0;
const SEED: u64 = 0x7011_6a7e;
/// How often what replica 0 holds is sampled: not a multiple of
/// `PERIOD`, so that the samples do not fall in step with the refusals.
const SAMPLE_NS: u64 = 97_000_000;

/// SplitMix64: small, fast, and the same numbers on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Who sends.
#[derive(Clone, Copy)]
enum Shape {
    /// One client at 20 times its rate, spread evenly over the replicas
    /// at a steady pace (the flood test: 333 requests a second each of 3).
    Hot,
    /// `clients` clients, each at half its rate, Poisson, each request to
    /// a random replica.
    Uniform { clients: usize },
    /// `clients` clients with Zipf popularity (exponent 1.1), Poisson,
    /// each request to a random replica: a few far over their limit, a
    /// long tail well under it.
    Zipf { clients: usize, total: f64 },
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Hot => "one hot client",
            Self::Uniform { .. } => "uniform",
            Self::Zipf { .. } => "Zipf keys",
        }
    }

    fn clients(self) -> usize {
        match self {
            Self::Hot => 1,
            Self::Uniform { clients } | Self::Zipf { clients, .. } => clients,
        }
    }

    /// Requests a second, all clients together.
    fn total(self) -> f64 {
        match self {
            Self::Hot => 20.0 * RATE,
            Self::Uniform { clients } => clients as f64 * RATE / 2.0,
            Self::Zipf { total, .. } => total,
        }
    }
}

/// What happens at a moment of simulated time.
enum Event {
    /// A request of `client` reaches `replica`.
    Arrival { replica: usize, client: usize },
    /// A lease request reaches Redis.
    Exec {
        replica: usize,
        client: usize,
        ask: Ask,
    },
    /// Redis's answer reaches the replica.
    Reply {
        replica: usize,
        client: usize,
        grant: Grant,
        ahead: bool,
    },
    /// A replica's upkeep tick: idle leases go back.
    Sweep { replica: usize },
    /// What a crash of replica 0 would strand now.
    Sample,
}

#[derive(Clone, Copy)]
struct Ask {
    want: u32,
    wait_for: u32,
    min: u32,
    /// Asked ahead of need (prefetch), for no request in particular.
    ahead: bool,
}

/// One client's lease on one replica, and the checks waiting for its
/// lease request.
struct Slot {
    state: LeaseState,
    in_flight: bool,
    waiting: u32,
}

/// Redis: the scripts' GCRA per client, times in microseconds.
struct Redis {
    tat: Vec<f64>,
}

impl Redis {
    /// The lease script (`scripts::LEASE`).
    fn lease(&mut self, client: usize, now: f64, l: LeaseLimits, ask: Ask) -> Grant {
        let emission = l.emission_us;
        let tau = emission * f64::from(l.capacity);
        let mut tat = self.tat[client].max(now);
        let available = ((tau - (tat - now)) / emission + 1e-9).floor();
        let mut n = f64::from(ask.want).min(available);
        if n < f64::from(ask.min) {
            n = 0.0;
        }
        if n > 0.0 {
            tat += n * emission;
            self.tat[client] = tat;
        }
        let remaining = (available - n).max(0.0);
        let mut wait = 0.0;
        if n == 0.0 || remaining < 1.0 {
            wait = (tat - tau + f64::from(ask.wait_for) * emission - now)
                .ceil()
                .max(0.0);
        }
        Grant {
            granted: n as u32,
            remaining: remaining as u32,
            wait: Some(Duration::from_micros(wait as u64)),
        }
    }

    /// The give-back script: tokens back, never above the capacity.
    fn give_back(&mut self, client: usize, now: f64, l: LeaseLimits, n: u32) {
        let tat = self.tat[client] - f64::from(n) * l.emission_us;
        self.tat[client] = if tat <= now { 0.0 } else { tat };
    }
}

/// One GCRA bucket per client, deciding every request at once: the
/// ideal the replicas are measured against.
struct Exact {
    tat: Vec<f64>,
}

impl Exact {
    fn admit(&mut self, client: usize, now: f64, l: LeaseLimits) -> bool {
        let tau = l.emission_us * f64::from(l.capacity);
        let tat = self.tat[client].max(now) + l.emission_us;
        if tat - now > tau + 1e-6 {
            return false;
        }
        self.tat[client] = tat;
        true
    }
}

#[derive(Default)]
struct Counts {
    requests: u64,
    admitted: Vec<u64>,
    exact: Vec<u64>,
    lease_calls: u64,
    give_back_calls: u64,
    stranded: Vec<u64>,
    worst_stranded_share: f64,
    first: Option<u64>,
    last: u64,
}

struct Sim {
    shape: Shape,
    replicas: usize,
    limits: LeaseLimits,
    now: u64,
    origin: Instant,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    seq: u64,
    rng: Rng,
    redis: Redis,
    exact: Exact,
    slots: Vec<HashMap<usize, Slot>>,
    /// Tokens granted by Redis and not yet received, per replica.
    in_transit: Vec<u64>,
    zipf: Vec<f64>,
    counts: Counts,
}

impl Sim {
    fn new(shape: Shape, replicas: usize) -> Self {
        let clients = shape.clients();
        let zipf = match shape {
            Shape::Zipf { .. } => {
                let weights: Vec<f64> = (1..=clients).map(|k| (k as f64).powf(-1.1)).collect();
                let sum: f64 = weights.iter().sum();
                let mut acc = 0.0;
                weights
                    .iter()
                    .map(|w| {
                        acc += w / sum;
                        acc
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Self {
            shape,
            replicas,
            limits: LeaseLimits {
                capacity: CAPACITY,
                emission_us: 1e6 / RATE,
            },
            now: 0,
            origin: Instant::now(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            rng: Rng(SEED ^ replicas as u64),
            redis: Redis {
                tat: vec![0.0; clients],
            },
            exact: Exact {
                tat: vec![0.0; clients],
            },
            slots: (0..replicas).map(|_| HashMap::new()).collect(),
            in_transit: vec![0; replicas],
            zipf,
            counts: Counts {
                admitted: vec![0; clients],
                exact: vec![0; clients],
                ..Counts::default()
            },
        }
    }

    fn at(&mut self, when: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((when, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn instant(&self) -> Instant {
        self.origin + Duration::from_nanos(self.now)
    }

    fn us(&self) -> f64 {
        self.now as f64 / 1e3
    }

    fn run(mut self) -> Counts {
        let end = (SECONDS * 1e9) as u64;
        let period = PERIOD.as_nanos() as u64;
        for r in 0..self.replicas {
            // Upkeep ticks of different replicas are not in step.
            let offset = period * r as u64 / self.replicas as u64;
            self.at(offset, Event::Sweep { replica: r });
            if let Shape::Hot = self.shape {
                let spacing = self.spacing();
                self.at(
                    spacing * r as u64 / self.replicas as u64,
                    Event::Arrival {
                        replica: r,
                        client: 0,
                    },
                );
            }
        }
        if !matches!(self.shape, Shape::Hot) {
            let first = self.next_poisson();
            self.at(first.0, first.1);
        }
        self.at(0, Event::Sample);
        while let Some(Reverse((when, seq))) = self.queue.pop() {
            if when > end {
                break;
            }
            self.now = when;
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.handle(event);
        }
        self.counts
    }

    /// Nanoseconds between one replica's requests of the hot client.
    fn spacing(&self) -> u64 {
        (1e9 * self.replicas as f64 / self.shape.total()) as u64
    }

    /// The next request of the Poisson shapes: when, to which replica,
    /// from which client.
    fn next_poisson(&mut self) -> (u64, Event) {
        let gap = -self.rng.unit().ln() / self.shape.total();
        let when = self.now + (gap * 1e9) as u64;
        let replica = self.rng.below(self.replicas);
        let client = match self.shape {
            Shape::Zipf { .. } => {
                let u = self.rng.unit();
                self.zipf
                    .partition_point(|&c| c < u)
                    .min(self.zipf.len() - 1)
            }
            _ => self.rng.below(self.shape.clients()),
        };
        (when, Event::Arrival { replica, client })
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrival { replica, client } => {
                let next = match self.shape {
                    Shape::Hot => Some((
                        self.now + self.spacing(),
                        Event::Arrival { replica, client },
                    )),
                    _ => Some(self.next_poisson()),
                };
                if let Some((when, e)) = next {
                    self.at(when, e);
                }
                self.arrive(replica, client);
            }
            Event::Exec {
                replica,
                client,
                ask,
            } => {
                let grant = self.redis.lease(client, self.us(), self.limits, ask);
                self.in_transit[replica] += u64::from(grant.granted);
                let ahead = ask.ahead;
                self.at(
                    self.now + RTT_NS / 2,
                    Event::Reply {
                        replica,
                        client,
                        grant,
                        ahead,
                    },
                );
            }
            Event::Reply {
                replica,
                client,
                grant,
                ahead,
            } => self.reply(replica, client, grant, ahead),
            Event::Sweep { replica } => self.sweep(replica),
            Event::Sample => self.sample(),
        }
    }

    fn send(&mut self, replica: usize, client: usize, ask: Ask) {
        self.counts.lease_calls += 1;
        self.at(
            self.now + RTT_NS / 2,
            Event::Exec {
                replica,
                client,
                ask,
            },
        );
    }

    /// A request, as `SharedLimiter::try_local` and then `lease` take it.
    fn arrive(&mut self, replica: usize, client: usize) {
        self.counts.requests += 1;
        if client == 0 {
            self.counts.first.get_or_insert(self.now);
            self.counts.last = self.now;
        }
        let (now, us, limits) = (self.instant(), self.us(), self.limits);
        if self.exact.admit(client, us, limits) {
            self.counts.exact[client] += 1;
        }
        let slot = self.slots[replica].entry(client).or_insert_with(|| Slot {
            state: LeaseState::new(now, limits),
            in_flight: false,
            waiting: 0,
        });
        slot.state.note_demand(now);
        let ask = match slot.state.take(now, limits, PERIOD, 1) {
            Local::Spent { .. } => {
                self.counts.admitted[client] += 1;
                // With a request in flight, `renew` finds the lock taken.
                let renew = if slot.in_flight {
                    None
                } else {
                    slot.state.prefetch(PERIOD)
                };
                renew.map(|(want, wait_for)| Ask {
                    want,
                    wait_for,
                    min: 1,
                    ahead: true,
                })
            }
            Local::Empty { .. } => None,
            Local::Fetch {
                want,
                min,
                wait_for,
            } => {
                if slot.in_flight {
                    slot.waiting += 1;
                    None
                } else {
                    Some(Ask {
                        want,
                        wait_for,
                        min,
                        ahead: false,
                    })
                }
            }
        };
        if let Some(ask) = ask {
            slot.in_flight = true;
            self.send(replica, client, ask);
        }
    }

    /// Redis's answer: to the request that asked (or the lease, for a
    /// request ahead of need), then to the checks that waited, in turn.
    fn reply(&mut self, replica: usize, client: usize, grant: Grant, ahead: bool) {
        self.in_transit[replica] -= u64::from(grant.granted);
        let (now, limits) = (self.instant(), self.limits);
        let Some(slot) = self.slots[replica].get_mut(&client) else {
            return;
        };
        slot.in_flight = false;
        if ahead {
            slot.state.prefetched(now, Some(grant));
        } else if slot.state.granted(now, grant, 1) {
            self.counts.admitted[client] += 1;
        }
        let mut ask = None;
        while slot.waiting > 0 && ask.is_none() {
            slot.waiting -= 1;
            match slot.state.take(now, limits, PERIOD, 1) {
                Local::Spent { .. } => self.counts.admitted[client] += 1,
                Local::Empty { .. } => {}
                Local::Fetch {
                    want,
                    min,
                    wait_for,
                } => {
                    slot.in_flight = true;
                    ask = Some(Ask {
                        want,
                        wait_for,
                        min,
                        ahead: false,
                    });
                }
            }
        }
        if let Some(ask) = ask {
            self.send(replica, client, ask);
        }
    }

    /// The upkeep: leases idle for `IDLE_RETURN` go back, in one call.
    fn sweep(&mut self, replica: usize) {
        let idle_since = self.instant().checked_sub(IDLE_RETURN);
        let (us, limits) = (self.us(), self.limits);
        let mut returned = false;
        if let Some(since) = idle_since {
            for (client, slot) in &mut self.slots[replica] {
                if let Some((n, _)) = slot.state.reclaim(since) {
                    self.redis.give_back(*client, us, limits, n);
                    returned = true;
                }
            }
        }
        self.counts.give_back_calls += u64::from(returned);
        self.at(
            self.now + PERIOD.as_nanos() as u64,
            Event::Sweep { replica },
        );
    }

    /// What replica 0 holds now: a crash would strand it.
    fn sample(&mut self) {
        let mut most = 0;
        let mut held = self.in_transit[0];
        for slot in self.slots[0].values() {
            held += u64::from(slot.state.held());
            most = most.max(slot.state.held());
        }
        self.counts.stranded.push(held);
        let share = f64::from(most) / f64::from(CAPACITY);
        self.counts.worst_stranded_share = self.counts.worst_stranded_share.max(share);
        self.at(self.now + SAMPLE_NS, Event::Sample);
    }
}

/// One row of the table.
fn row(shape: Shape, replicas: usize) -> String {
    let c = Sim::new(shape, replicas).run();
    let admitted: u64 = c.admitted.iter().sum();
    let exact: u64 = c.exact.iter().sum();
    let worst = c
        .admitted
        .iter()
        .zip(&c.exact)
        .map(|(&a, &e)| a as i64 - e as i64)
        .max_by_key(|d| d.abs())
        .unwrap_or(0);
    let error = (admitted as f64 - exact as f64) / exact as f64 * 100.0;
    let heartbeats = replicas as f64 * SECONDS / HEARTBEAT.as_secs_f64();
    let ops = (c.lease_calls + c.give_back_calls) as f64 + heartbeats;
    let per_sec = ops / SECONDS;
    let mean = c.stranded.iter().sum::<u64>() as f64 / c.stranded.len().max(1) as f64;
    let max = c.stranded.iter().max().copied().unwrap_or(0);
    let formula = match (shape, c.first) {
        (Shape::Hot, Some(first)) => {
            let t = (c.last - first) as f64 / 1e9;
            format!(" (`20 + 50·t` = {:.1})", f64::from(CAPACITY) + RATE * t)
        }
        _ => String::new(),
    };
    format!(
        "| {} | {replicas} | {:.0} | {admitted} | {exact}{formula} | {error:+.2} % | {worst:+} | {:.1} | {:.0} | {mean:.1} / {max} | {:.0} % |",
        shape.name(),
        shape.total(),
        per_sec / replicas as f64,
        per_sec,
        c.worst_stranded_share * 100.0,
    )
}

fn main() {
    let limits = LeaseLimits {
        capacity: CAPACITY,
        emission_us: 1e6 / RATE,
    };
    println!(
        "Every client: capacity {CAPACITY}, {RATE}/s; max_lease {}; refill_interval {PERIOD:?}; \
         Redis round trip {} µs; {SECONDS} s simulated; seed {SEED:#x}.\n",
        max_lease(limits),
        RTT_NS / 1000,
    );
    println!(
        "| traffic | replicas | requests/s | admitted | exact | error | worst client (tokens) \
         | Redis ops/s per replica | Redis ops/s total | stranded by a crash: mean / max tokens \
         | most of one client's capacity |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let shapes = [
        Shape::Hot,
        Shape::Uniform { clients: 1000 },
        Shape::Zipf {
            clients: 10_000,
            total: 50_000.0,
        },
    ];
    for shape in shapes {
        for replicas in [3, 10, 100, 1000] {
            println!("{}", row(shape, replicas));
        }
    }
}
