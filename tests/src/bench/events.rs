//! Part 4: flow events. How many new connections per second the kernel
//! programs turn into flow records that one core reads, names and writes as
//! JSON lines with no loss, and what happens when the reader falls behind:
//! every record is read or counted lost, never silently gone.
//!
//! The producer runs new, allowed connections (distinct tuples) through the
//! real ingress program with `BPF_PROG_TEST_RUN`, pinned to CPU 0; each
//! writes one record to the events ring buffer. The reader, pinned to CPU 1,
//! does what the agent's event task does for each record: `decode`, name it
//! with `Namer::record` against the compiled policy of its generation, and
//! serialise it to a JSON line (counted, not written out).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use aya::maps::{MapData, RingBuf};
use aya::programs::SchedClassifier;
use nix::libc;
use serde::Serialize;
use time::OffsetDateTime;
use wardline_agent::enforcer::Enforcer;
use wardline_agent::events::{Generations, Namer, decode};
use wardline_ebpf_abi as abi;
use wardline_policy::{CompileOptions, Dataplane};

use crate::bench::packet::{Programs, WARDLINE_PASS, drain, tcp_frame, test_run};
use crate::bench::{Budget, Results, Section, Target, cpus_online, pin_to_cpu, stats, thousands};

const PRODUCER_CPU: usize = 0;
const READER_CPU: usize = 1;
const POLICY_NAME: &str = "clients-to-servers";
const POLICY: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: clients}
spec: {cidrs: ["198.18.0.0/16"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: servers}
spec: {cidrs: ["198.19.0.0/24"]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: clients-to-servers}
spec: {action: allow, from: [clients], to: [servers], ports: [{protocol: tcp, port: 443}]}
"#;
/// Connections per step at most: below the tracking table's 262,144.
const STEP_MAX: u64 = 200_000;

/// The bytes one record takes in the ring buffer: an 8-byte header and the
/// record, rounded up to 8.
const RECORD_BYTES: u64 = (size_of::<abi::FlowEvent>() as u64 + 8).div_ceil(8) * 8;
/// Records the ring buffer holds when nobody reads.
const RING_RECORDS: u64 = (abi::EVENTS_BYTES as u64 - 1) / RECORD_BYTES;

/// New connections from 198.18.0.0/16 to 198.19.0.10:443, tuple `k` in
/// one reused frame.
struct Producer {
    frame: Vec<u8>,
    next: u64,
}

impl Producer {
    fn new() -> Producer {
        Producer {
            frame: tcp_frame(
                Ipv4Addr::new(198, 18, 0, 0),
                Ipv4Addr::new(198, 19, 0, 10),
                1024,
                443,
                0x02,
            ),
            next: 0,
        }
    }

    /// Runs the next connection through `program`.
    fn one(&mut self, program: &SchedClassifier) -> anyhow::Result<()> {
        let k = self.next;
        self.next += 1;
        let client = (k / 64_000) % 65_536;
        let sport = 1024 + (k % 64_000) as u16;
        // IPv4 source at 26..30 (its last two bytes), TCP source port at 34.
        self.frame[28] = (client >> 8) as u8;
        self.frame[29] = client as u8;
        self.frame[34..36].copy_from_slice(&sport.to_be_bytes());
        let (ret, _) = test_run(program, &self.frame, 1)?;
        ensure!(ret == WARDLINE_PASS, "a new connection returned {ret}");
        Ok(())
    }
}

/// What the reader did.
#[derive(Clone, Copy, Debug, Default)]
struct Read {
    records: u64,
    /// JSON bytes written, newlines included.
    bytes: u64,
    /// Records that did not decode or name as the policy that allowed them.
    misnamed: u64,
    /// From the reader's start to its last record.
    seconds: f64,
}

/// The agent's naming path.
struct Reader {
    namer: Namer,
    generations: Mutex<Generations>,
}

impl Reader {
    /// Decodes, names and serialises every record now in `ring`.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, read: &mut Read) -> u64 {
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            let Some(e) = decode(&item) else {
                read.misnamed += 1;
                continue;
            };
            drop(item);
            let record = {
                let generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
                self.namer.record(&e, &generations)
            };
            if record.kind != "new"
                || record.verdict != "allowed"
                || record.policy.as_deref() != Some(POLICY_NAME)
                || record.src_segment != "clients"
            {
                read.misnamed += 1;
            }
            match serde_json::to_string(&record) {
                Ok(line) => read.bytes += line.len() as u64 + 1,
                Err(_) => read.misnamed += 1,
            }
        }
        read.records += n;
        n
    }

    /// Reads until `done` is set and the ring buffer is empty, waiting for
    /// records with poll(2) as the agent does.
    fn follow(&mut self, ring: &mut RingBuf<MapData>, done: &AtomicBool) -> Read {
        let fd = Enforcer::events_fd(ring);
        let started = Instant::now();
        let mut read = Read::default();
        loop {
            let finished = done.load(Ordering::Acquire);
            if self.drain(ring, &mut read) > 0 {
                read.seconds = started.elapsed().as_secs_f64();
                continue;
            }
            if finished {
                break;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call's duration; the fd is the
            // ring buffer's, open while `ring` is borrowed.
            unsafe { libc::poll(&mut pfd, 1, 5) };
        }
        read
    }
}

struct Fixture {
    programs: Programs,
    ring: RingBuf<MapData>,
    reader: Reader,
    producer: Producer,
    two_cpus: bool,
}

/// One measured step.
#[derive(Debug)]
struct Step {
    /// Connections per second asked for; `None`: as fast as it goes.
    offered: Option<f64>,
    connections: u64,
    producer_seconds: f64,
    read: Read,
    lost: u64,
}

impl Step {
    fn accounted(&self) -> bool {
        self.read.records + self.lost == self.connections && self.read.misnamed == 0
    }

    fn rate(&self) -> f64 {
        self.connections as f64 / self.producer_seconds.max(1e-9)
    }

    fn figures(&self) -> StepFigures {
        StepFigures {
            offered_per_second: self.offered,
            connections: self.connections,
            producer_seconds: self.producer_seconds,
            produced_per_second: self.rate(),
            records_read: self.read.records,
            reader_seconds: self.read.seconds,
            json_bytes: self.read.bytes,
            misnamed: self.read.misnamed,
            lost_events: self.lost,
            accounted: self.accounted(),
        }
    }
}

/// One measured step, as reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StepFigures {
    /// Connections per second asked for; `None`: as fast as it goes.
    offered_per_second: Option<f64>,
    connections: u64,
    producer_seconds: f64,
    produced_per_second: f64,
    records_read: u64,
    /// From the reader's start to its last record.
    reader_seconds: f64,
    /// JSON bytes written, newlines included.
    json_bytes: u64,
    /// Records that did not decode or name the policy that allowed them.
    misnamed: u64,
    /// The kernel's count of records the full ring buffer refused.
    lost_events: u64,
    /// Every connection read or counted lost, each named right.
    accounted: bool,
}

impl StepFigures {
    fn offered(&self) -> String {
        self.offered_per_second.map_or("flat out".to_owned(), |r| {
            format!("{}/s", thousands(r as u64))
        })
    }
}

/// What part 4 measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsResults {
    quick: bool,
    record_bytes: u64,
    ring_buffer_bytes: u32,
    ring_buffer_records: u64,
    producer_cpu: usize,
    reader_cpu: usize,
    two_cpus: bool,
    /// Medians over the rounds apart.
    producer_per_second_apart: u64,
    reader_per_second_apart: u64,
    /// The highest rate of a step together with zero loss.
    zero_loss_per_second: f64,
    apart: Vec<StepFigures>,
    together: Vec<StepFigures>,
    bursts: Vec<StepFigures>,
    seconds: f64,
}

impl Fixture {
    fn open() -> anyhow::Result<Fixture> {
        let mut programs = Programs::load("events")?;
        let set = wardline_policy::parse(POLICY)
            .map_err(|e| anyhow::anyhow!("the events policy: {e}"))?;
        let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc()))?;
        let generation = programs.enforcer.apply(&dp, &[])?.live;
        programs.enforcer.set_events(true)?;
        let ring = programs
            .enforcer
            .take_events()
            .context("the events ring buffer is missing")?;
        let mut generations = Generations::default();
        generations.insert(generation, &dp, 0);
        Ok(Fixture {
            programs,
            ring,
            reader: Reader {
                namer: Namer::new("bench".to_owned()),
                generations: Mutex::new(generations),
            },
            producer: Producer::new(),
            two_cpus: cpus_online() >= 2,
        })
    }

    fn counters(&self) -> anyhow::Result<(u64, u64)> {
        let c = self.programs.enforcer.counters()?;
        Ok((
            c.packets[abi::DIR_INGRESS as usize][abi::Reason::PolicyAllow as usize],
            c.lost_events,
        ))
    }

    /// Forgets the connections of the last step and empties the ring.
    fn reset(&mut self) -> anyhow::Result<()> {
        self.programs.enforcer.flush_tracking()?;
        drain(&mut self.ring);
        Ok(())
    }

    /// `n` connections with the reader idle; returns the producer's seconds.
    fn produce(&mut self, n: u64) -> anyhow::Result<f64> {
        let started = Instant::now();
        let program = self.programs.ingress()?;
        for _ in 0..n {
            self.producer.one(program)?;
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// The reader alone on its CPU, over what the ring buffer holds.
    fn read_alone(&mut self) -> anyhow::Result<Read> {
        let (reader, ring, two_cpus) = (&mut self.reader, &mut self.ring, self.two_cpus);
        std::thread::scope(|s| {
            s.spawn(|| {
                if two_cpus {
                    pin_to_cpu(READER_CPU);
                }
                let started = Instant::now();
                let mut read = Read::default();
                reader.drain(ring, &mut read);
                read.seconds = started.elapsed().as_secs_f64();
                read
            })
            .join()
        })
        .map_err(|_| anyhow::anyhow!("the reader panicked"))
    }

    /// A burst of `n` connections with the reader paused, then read.
    fn burst(&mut self, n: u64) -> anyhow::Result<Step> {
        self.reset()?;
        let (allowed0, lost0) = self.counters()?;
        let producer_seconds = self.produce(n)?;
        let read = self.read_alone()?;
        let (allowed1, lost1) = self.counters()?;
        ensure!(
            allowed1 - allowed0 == n,
            "{} of {n} connections counted allowed",
            allowed1 - allowed0
        );
        Ok(Step {
            offered: None,
            connections: n,
            producer_seconds,
            read,
            lost: lost1 - lost0,
        })
    }

    /// `n` connections at `rate` per second (or flat out) while the reader
    /// follows on the other CPU.
    fn concurrent(&mut self, n: u64, rate: Option<f64>) -> anyhow::Result<Step> {
        self.reset()?;
        let (allowed0, lost0) = self.counters()?;
        let done = AtomicBool::new(false);
        let two_cpus = self.two_cpus;
        let Fixture {
            programs,
            ring,
            reader,
            producer,
            ..
        } = self;
        let (produced, read) = std::thread::scope(|s| {
            let reading = s.spawn(|| {
                if two_cpus {
                    pin_to_cpu(READER_CPU);
                }
                reader.follow(ring, &done)
            });
            let produced = (|| -> anyhow::Result<f64> {
                let program = programs.ingress()?;
                let started = Instant::now();
                for i in 0..n {
                    if let Some(rate) = rate
                        && i % 16 == 0
                    {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        while Instant::now() < due {
                            std::hint::spin_loop();
                        }
                    }
                    producer.one(program)?;
                }
                Ok(started.elapsed().as_secs_f64())
            })();
            done.store(true, Ordering::Release);
            (produced, reading.join())
        });
        let producer_seconds = produced?;
        let read = read.map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        let (allowed1, lost1) = self.counters()?;
        ensure!(
            allowed1 - allowed0 == n,
            "{} of {n} connections counted allowed",
            allowed1 - allowed0
        );
        Ok(Step {
            offered: rate,
            connections: n,
            producer_seconds,
            read,
            lost: lost1 - lost0,
        })
    }
}

/// Part 4 of the benchmarks.
pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the flow-event benchmark loads BPF programs: it needs root"
    );
    std::thread::spawn(move || {
        pin_to_cpu(PRODUCER_CPU);
        measure(budget)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the producing thread panicked"))?
}

fn measure(budget: Budget) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut f = Fixture::open()?;
    let quick = budget.quick;

    // Apart: the producer alone, then the reader alone, over one batch that
    // fits in the ring buffer; the median of a few rounds.
    let (batch, rounds) = if quick { (2_048, 1) } else { (32_768, 5) };
    let mut apart = Vec::new();
    for _ in 0..rounds {
        let step = f.burst(batch)?;
        ensure!(
            step.lost == 0 && step.accounted(),
            "a batch of {batch} lost records: {step:?}"
        );
        apart.push(step);
    }
    let producer_rate =
        stats::median(&apart.iter().map(|s| s.rate() as u64).collect::<Vec<_>>()).unwrap_or(0);
    let reader_rate = stats::median(
        &apart
            .iter()
            .map(|s| (s.read.records as f64 / s.read.seconds.max(1e-9)) as u64)
            .collect::<Vec<_>>(),
    )
    .unwrap_or(0);
    eprintln!(
        "events: apart: producer {} connections/s, reader {} records/s",
        thousands(producer_rate),
        thousands(reader_rate)
    );

    // Together: offered rates up to flat out, the reader following.
    let offered: &[Option<f64>] = if quick {
        &[None]
    } else {
        &[
            Some(50_000.0),
            Some(100_000.0),
            Some(200_000.0),
            Some(400_000.0),
            None,
        ]
    };
    let mut together = Vec::new();
    for &rate in offered {
        let n = match rate {
            _ if quick => 4_096,
            Some(rate) => ((rate * 2.0) as u64).min(STEP_MAX),
            None => STEP_MAX,
        };
        let step = f.concurrent(n, rate)?;
        eprintln!(
            "events: together at {}: {} connections/s, {} read, {} lost",
            rate.map_or("flat out".to_owned(), |r| format!(
                "{}/s",
                thousands(r as u64)
            )),
            thousands(step.rate() as u64),
            thousands(step.read.records),
            thousands(step.lost)
        );
        together.push(step);
    }

    // Where loss starts: bursts around the ring buffer's size, nobody reading.
    let bursts: Vec<u64> = if quick {
        vec![RING_RECORDS + 512]
    } else {
        vec![
            RING_RECORDS / 2,
            RING_RECORDS - 256,
            RING_RECORDS + 256,
            2 * RING_RECORDS,
        ]
    };
    let mut burst = Vec::new();
    for n in bursts {
        let step = f.burst(n)?;
        eprintln!(
            "events: burst of {}: {} read, {} lost",
            thousands(n),
            thousands(step.read.records),
            thousands(step.lost)
        );
        burst.push(step);
    }
    f.reset()?;
    let two_cpus = f.two_cpus;
    drop(f);
    let together: Vec<StepFigures> = together.iter().map(Step::figures).collect();
    let zero_loss = together
        .iter()
        .filter(|s| s.lost_events == 0 && s.accounted)
        .map(|s| s.produced_per_second)
        .fold(0.0f64, f64::max);
    Section::of(&EventsResults {
        quick,
        record_bytes: RECORD_BYTES,
        ring_buffer_bytes: abi::EVENTS_BYTES,
        ring_buffer_records: RING_RECORDS,
        producer_cpu: PRODUCER_CPU,
        reader_cpu: if two_cpus { READER_CPU } else { PRODUCER_CPU },
        two_cpus,
        producer_per_second_apart: producer_rate,
        reader_per_second_apart: reader_rate,
        zero_loss_per_second: zero_loss,
        apart: apart.iter().map(Step::figures).collect(),
        together,
        bursts: burst.iter().map(Step::figures).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Results for EventsResults {
    fn tables(&self) -> String {
        let mut table = String::new();
        let batch = self.apart.first().map_or(0, |s| s.connections);
        let _ = writeln!(
            table,
            "Apart: one batch of {} connections, the reader idle while the producer runs; median of {} rounds\n",
            thousands(batch),
            self.apart.len()
        );
        let _ = writeln!(table, "| stage | per second |");
        let _ = writeln!(table, "|---|---:|");
        let _ = writeln!(
            table,
            "| producer: new connections through the program, records into the ring buffer (CPU {}) | {} |",
            self.producer_cpu,
            thousands(self.producer_per_second_apart)
        );
        let _ = writeln!(
            table,
            "| reader: records decoded, named and written as JSON (CPU {}) | {} |",
            self.reader_cpu,
            thousands(self.reader_per_second_apart)
        );
        let _ = writeln!(
            table,
            "\nTogether: the producer at an offered rate, the reader following on the other CPU\n"
        );
        let _ = writeln!(
            table,
            "| offered | connections | produced per second | records read | counted lost | read + lost = produced |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|---|");
        for s in &self.together {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} |",
                s.offered(),
                thousands(s.connections),
                thousands(s.produced_per_second as u64),
                thousands(s.records_read),
                thousands(s.lost_events),
                if s.accounted { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(
            table,
            "\nWhere loss starts: a burst with the reader paused (the ring buffer holds {} records of {} bytes)\n",
            thousands(self.ring_buffer_records),
            self.record_bytes
        );
        let _ = writeln!(
            table,
            "| burst | records read | counted lost | read + lost = burst |"
        );
        let _ = writeln!(table, "|---:|---:|---:|---|");
        for s in &self.bursts {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} |",
                thousands(s.connections),
                thousands(s.records_read),
                thousands(s.lost_events),
                if s.accounted { "yes" } else { "**no**" }
            );
        }
        table
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets = vec![Target::new(
            "every flow event is read or counted lost, in every step (no silent loss)",
            self.apart
                .iter()
                .chain(&self.together)
                .chain(&self.bursts)
                .all(|s| s.accounted),
        )];
        if let Some(s) = self
            .together
            .iter()
            .find(|s| s.offered_per_second.is_none())
        {
            targets.push(Target::new(
                format!(
                    "zero loss with one core reading while the producer runs flat out on the other: {} connections/s, {} lost",
                    thousands(s.produced_per_second as u64),
                    thousands(s.lost_events)
                ),
                s.lost_events == 0 && s.accounted,
            ));
        }
        let ring = self.ring_buffer_records;
        let below = self.bursts.iter().filter(|s| s.connections <= ring);
        let mut above = self
            .bursts
            .iter()
            .filter(|s| s.connections > ring)
            .peekable();
        let below_clean = below.clone().all(|s| s.lost_events == 0);
        let has_above = above.peek().is_some();
        targets.push(Target::new(
            format!(
                "loss starts only when a burst outgrows the ring buffer ({} records), and is counted",
                thousands(ring)
            ),
            below_clean
                && has_above
                && above.all(|s| s.lost_events > 0 && s.records_read <= ring && s.accounted),
        ));
        targets
    }

    fn how_to_read(&self) -> String {
        let mut how = String::new();
        let _ = write!(
            how,
            "New connections (distinct tuples, allowed by one policy) run through the agent's \
             ingress program with `BPF_PROG_TEST_RUN`, one call each, on CPU {}; \
             each writes one flow record ({} bytes in the ring buffer). The reader, on CPU \
             {}, waits with poll(2) and does the agent's work per record: \
             `events::decode`, `Namer::record` (segments and policy named from the compiled \
             policy of the record's generation, time and interface formatted) and \
             `serde_json::to_string`; the lines are counted, not written out. Each record is \
             checked to name the allowing policy. *Lost* is the kernel's own count of \
             records the full ring buffer refused (`lost_events`); the programs never wait \
             for the reader.\n\n\
             - **Apart**: what each side manages alone, one core each.\n\
             - **Together**: both at once. The highest rate with zero loss this run: \
             **{} connections/s turned into named records**. {}\n\
             - **Where loss starts**: the reader paused, bursts around the ring buffer's \
             capacity ({} MiB): what does not fit is lost and counted, the rest is read.{}\n\n\
             This part took {:.0} s.",
            self.producer_cpu,
            self.record_bytes,
            self.reader_cpu,
            thousands(self.zero_loss_per_second as u64),
            match self.together.iter().find(|s| s.lost_events > 0) {
                None => format!(
                    "No step lost a record: the producer, one `BPF_PROG_TEST_RUN` syscall per \
                     connection on one CPU, tops out before the reader does. The reader alone \
                     reads {} records/s; sustained loss would start above that rate (a real \
                     NIC spreads new connections over every CPU, while the agent reads on \
                     one), and a burst beyond the ring buffer's capacity loses the excess.",
                    thousands(self.reader_per_second_apart)
                ),
                Some(first) => format!(
                    "Loss started at an offered {}: the reader fell behind the producer.",
                    first.offered()
                ),
            },
            self.ring_buffer_bytes >> 20,
            if self.two_cpus {
                ""
            } else {
                " This machine has one CPU: producer and reader shared it."
            },
            self.seconds,
        );
        if self.quick {
            how.push_str(
                "\n\n**Quick run**: small batches and one rate, to check the harness, not figures to quote.",
            );
        }
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_takes_112_bytes_of_the_ring() {
        // 104 bytes of event (with the frame's Ethernet addresses) and the
        // ring's 8-byte header.
        assert_eq!(RECORD_BYTES, 112);
        assert_eq!(RING_RECORDS, 37_449);
    }

    #[test]
    fn the_policy_parses() {
        let set = wardline_policy::parse(POLICY).unwrap();
        assert_eq!(set.policies[0].name, POLICY_NAME);
    }
}
