//! The `citystream` binary: parse, validate, run; errors end here with a message and a
//! non-zero exit code.

use std::process::ExitCode;

use citystream::cli::{Cli, Command};
use citystream::contract::Stream;
use clap::Parser;

/// mimalloc instead of the system allocator: decoded records, rows and encoder state are many
/// small, short-lived allocations (≈ 16 % of all CPU samples ended in glibc's malloc/free);
/// see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    citystream::observe::logs::init(cli.log_format);
    if let Command::Status(args) = &cli.command {
        // `status` has exit codes of its own: healthy, empty, broken chain.
        return match citystream::cli::status::run(args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // An error the running pipeline met (the process's peers stop too, and a supervisor
            // restarts the cluster) is told apart from a configuration error at start.
            match e.downcast_ref::<citystream::error::PipelineError>() {
                Some(_) => ExitCode::from(citystream::run::FATAL_EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => {
            let (fleet, produce) = args.validate()?;
            let summary = citystream::simulate::producer::produce(fleet, &produce)?;
            println!(
                "simulated {} records in {:.2} s ({:.0} records/s, {:.1} MB/s)",
                summary.delivered,
                summary.seconds,
                summary.rate(),
                summary.bytes as f64 / summary.seconds.max(1e-9) / 1e6
            );
            for s in Stream::ALL {
                println!("  {}{:<16} {:>10}", produce.topic_prefix, s.name(), summary.per_stream[s.index()]);
            }
            println!("  injected late: {}, injected malformed: {}", summary.injected_late, summary.injected_malformed);
            Ok(())
        }
        Command::Ddl(args) => {
            let ddl = if args.hive {
                citystream::ddl::hive_statements(&args.output, &args.database)
            } else {
                citystream::ddl::statements(&args.output, &args.database)
            };
            print!("{ddl}");
            Ok(())
        }
        Command::Compact(args) => {
            let opts = args.validate()?;
            let lake = citystream::lake::Lake::open(&args.output)?;
            let rt = tokio::runtime::Runtime::new()?;
            let reports = rt.block_on(citystream::delta::compact::compact_lake(&lake, &opts))?;
            let verb = if opts.dry_run { "would rewrite" } else { "rewrote" };
            for r in &reports {
                println!(
                    "{:<16} files {:>6} → {:<6} ({verb} {} partitions, {} rows, {} commits)",
                    r.table, r.files_before, r.files_after, r.partitions, r.rows, r.commits
                );
            }
            Ok(())
        }
        Command::Vacuum(args) => {
            let retention = args.validate()?;
            let lake = citystream::lake::Lake::open(&args.output)?;
            let rt = tokio::runtime::Runtime::new()?;
            let reports = rt.block_on(citystream::delta::vacuum::vacuum_lake(&lake, retention, args.dry_run))?;
            let verb = if args.dry_run { "would delete" } else { "deleted" };
            for r in &reports {
                println!(
                    "{:<16} {verb} {:>6} files, kept {} unreferenced (younger than the retention or of a commit in flight)",
                    r.table,
                    r.deleted.len(),
                    r.kept
                );
                if args.dry_run {
                    for f in &r.deleted {
                        println!("  {f}");
                    }
                }
            }
            Ok(())
        }
        Command::Status(_) => unreachable!("handled in main"),
        Command::Run(args) => {
            let cfg = args.validate()?;
            let embedded = matches!(cfg.source, citystream::cli::run::SourceConfig::Embedded { .. });
            let report = citystream::run::run(cfg)?;
            print_run_report(&report, embedded);
            Ok(())
        }
    }
}

fn print_run_report(r: &citystream::run::RunReport, embedded: bool) {
    let c = &r.committed;
    let source = if embedded { "the embedded simulator" } else { "Kafka" };
    println!("citystream run finished in {:.1} s (source: {source})", r.seconds);
    // What this process did: every process reads and writes its share.
    let p = &r.process;
    let this = if r.processes > 1 { format!("this process (process {} of {})", r.process_index, r.processes) } else { "this process".to_owned() };
    println!(
        "  {this} read {} records ({:.0} records/s; {} on time, {} late, {} dead letters; {:.1} MB of values) and wrote {} objects ({:.1} MB)",
        p.records(),
        p.records() as f64 / r.seconds.max(1e-9),
        p.ok,
        p.late,
        p.dead_letters,
        p.bytes_read as f64 / 1e6,
        p.objects,
        p.bytes_written as f64 / 1e6
    );
    if r.process_index != 0 {
        println!("  cluster totals: reported by process 0, which commits for the cluster (or run `citystream status --output {}`)", r.output);
        return;
    }
    let scope = if r.processes > 1 { "the cluster (all processes)" } else { "the cluster" };
    if c.manifests == 0 {
        println!("  committed by {scope}: nothing new (the output is up to date)");
    }
    let total: u64 = c.rows.iter().sum::<u64>() + c.late + c.dead_letters;
    println!("  records committed: {total} by {scope} ({:.0} records/s)", total as f64 / r.seconds.max(1e-9));
    for s in Stream::ALL {
        println!("    {:<16} {:>10}", s.name(), c.rows[s.index()]);
    }
    println!("  late records:     {:>10}", c.late);
    println!("  dead letters:     {:>10}", c.dead_letters);
    match c.epochs {
        Some((a, b)) => println!(
            "  epochs sealed:    {:>10} (epoch = {} of event time; {a}..={b})",
            b.since(a) + 1,
            humantime::format_duration(std::time::Duration::from_micros(r.window_us as u64))
        ),
        None => println!("  epochs sealed:    {:>10}", 0),
    }
    let per_thousand = if total > 0 { c.objects as f64 * 1000.0 / total as f64 } else { 0.0 };
    let mean = if c.objects > 0 { c.bytes as f64 / c.objects as f64 / 1e3 } else { 0.0 };
    println!("  objects written:  {:>10} ({:.1} MB; mean {mean:.1} kB, {per_thousand:.2} per 1,000 records; all processes)", c.objects, c.bytes as f64 / 1e6);
    if c.aggregate_files > 0 || c.aggregate_removed > 0 {
        println!("  aggregate tables: {:>10} files written ({} rows), {} replaced or removed", c.aggregate_files, c.aggregate_rows, c.aggregate_removed);
    }
    println!("  manifests:        {:>10}", c.manifests);
    let mut lat = c.seal_latencies.clone();
    lat.sort_by(f64::total_cmp);
    if let (Some(max), false) = (lat.last(), lat.is_empty()) {
        println!(
            "  commit latency:   median {:.0} ms, max {:.0} ms (frontier passed a commit's first epoch → its manifest durable; ≤ --commit-interval {} + upload)",
            lat[lat.len() / 2] * 1e3,
            max * 1e3,
            humantime::format_duration(r.commit_interval)
        );
    }
    if r.garbage_collected > 0 {
        println!("  uncommitted objects of a crashed run deleted: {}", r.garbage_collected);
    }
    if let Some(p) = &r.published {
        println!(
            "  Delta tables:     {:>10} commits, {} objects added; every table holds manifest {}",
            p.commits,
            p.files,
            p.head.map_or("-".to_owned(), |h| h.to_string())
        );
    }
    let agg = if c.aggregate_files > 0 { ", one per aggregate table under agg/" } else { "" };
    println!("  output: {} (a Delta table per stream{agg} and _dead_letter/; manifests in _manifests/)", r.output);
}

/// mimalloc advises the kernel to back its arenas with transparent huge pages
/// (`MADV_HUGEPAGE`): a 2 MiB page is then resident as soon as one byte of it is touched, and
/// stays so until all of it is free. That was 50–70 MiB of a 330 MiB process on the fleet
/// benchmark, with no measurable gain in speed (docs/benchmarks.md). The kernel checks this
/// flag at every page fault, so setting it first thing in `main` covers the arenas mimalloc
/// reserved before. It is what mimalloc's own `MIMALLOC_ALLOW_THP=0` does; setting that
/// variable (to any value) leaves the choice to mimalloc.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and affects this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
