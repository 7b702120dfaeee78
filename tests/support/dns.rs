//! A tiny DNS server on 127.0.0.1:0 (UDP) whose answers a test changes:
//! A and SRV records by name, or SERVFAIL for everything. Enough of RFC
//! 1035 for a resolver's queries: one question in, its answers out with a
//! name pointer to the question.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// One record the server answers with.
#[derive(Debug, Clone)]
pub enum Rec {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// A service target: priority, weight, port, target name.
    Srv(u16, u16, u16, String),
}

#[derive(Debug, Default)]
struct Zone {
    records: HashMap<String, Vec<Rec>>,
    servfail: bool,
    queries: usize,
}

/// The running server.
pub struct DnsServer {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Starts it with no records.
    pub async fn start() -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns");
        let addr = socket.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let serving = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let reply = {
                    let mut z = serving.lock().expect("zone");
                    z.queries += 1;
                    answer(&buf[..n], &z)
                };
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Self { addr, zone, task }
    }

    /// Answers `name` with `records` from now on (no records: an empty
    /// answer).
    pub fn set(&self, name: &str, records: Vec<Rec>) {
        let mut z = self.zone.lock().expect("zone");
        z.records.insert(name.to_ascii_lowercase(), records);
    }

    /// Answers every query with SERVFAIL (or stops doing so).
    pub fn fail(&self, on: bool) {
        self.zone.lock().expect("zone").servfail = on;
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.zone.lock().expect("zone").queries
    }
}

/// The reply to `query`, if it is one question of class IN.
fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let (name, end) = read_name(query, 12)?;
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let question = query.get(12..end + 4)?;
    let records: Vec<&Rec> = zone
        .records
        .get(&name)
        .map(|rs| {
            rs.iter()
                .filter(|r| matches!((r, qtype), (Rec::A(_), 1) | (Rec::Srv(..), 33)))
                .collect()
        })
        .unwrap_or_default();
    let rcode: u8 = if zone.servfail { 2 } else { 0 };
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    // QR, opcode 0, AA, RD copied; RA; rcode.
    out.push(0x84 | (query[2] & 0x01));
    out.push(0x80 | rcode);
    let count = if zone.servfail {
        0
    } else {
        records.len() as u16
    };
    for n in [1u16, count, 0, 0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(question);
    for r in records.iter().take(usize::from(count)) {
        out.extend_from_slice(&[0xc0, 0x0c]);
        let (rtype, rdata) = match r {
            Rec::A(ip) => (1u16, ip.octets().to_vec()),
            Rec::Srv(priority, weight, port, target) => {
                let mut d = Vec::new();
                for n in [*priority, *weight, *port] {
                    d.extend_from_slice(&n.to_be_bytes());
                }
                d.extend(encode_name(target));
                (33, d)
            }
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes()); // TTL 1 s
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend(rdata);
    }
    Some(out)
}

/// The name at `at` (lowercase, no trailing dot) and where it ends.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    Some((labels.join("."), at))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}
