//! The key-value contract, checked on every backend: what a write transaction sees and leaves,
//! ordered scans (prefixes, bounds, backwards, across pages), snapshots, and write
//! transactions one at a time, also from two handles on one database (two replicas).

use std::ops::Bound;

use super::Table;
use crate::storage::test_support::on_every_backend;
use crate::storage::StorageError;

const PAIRS: Table<(String, String), String> = Table::new("test_pairs");
const TRIPLES: Table<(String, String, String), Vec<u8>> = Table::new("test_triples");
const NUMBERS: Table<u64, (u64, u64)> = Table::new("test_numbers");
const NAMES: Table<String, u64> = Table::new("test_names");

on_every_backend! {
    /// A write sees its own writes; insert and remove return what was there; a failed
    /// transaction leaves nothing; a committed one is seen by the next read.
    fn writes_commit_whole_or_not_at_all(backend) {
        let dir = tempfile::tempdir().unwrap();
        let kv = backend.kv(dir.path());
        kv.write(|tx| {
            for table in [PAIRS.def(), TRIPLES.def(), NUMBERS.def(), NAMES.def()] {
                tx.create_table(table)?;
            }
            Ok(())
        })
        .unwrap();
        kv.write(|tx| {
            assert_eq!(tx.insert(PAIRS, ("r", "a"), "1")?, None);
            assert_eq!(tx.insert(PAIRS, ("r", "a"), "2")?.as_deref(), Some("1"));
            assert_eq!(tx.get(PAIRS, ("r", "a"))?.as_deref(), Some("2"));
            tx.insert(NUMBERS, 7, (1, u64::MAX))?;
            Ok(())
        })
        .unwrap();
        let failed: Result<(), StorageError> = kv.write(|tx| {
            tx.insert(PAIRS, ("r", "b"), "lost")?;
            assert_eq!(tx.remove(PAIRS, ("r", "a"))?.as_deref(), Some("2"));
            Err(StorageError::Denied("refused after writing".into()))
        });
        assert!(matches!(failed, Err(StorageError::Denied(_))));
        kv.read(|tx| {
            assert_eq!(tx.get(PAIRS, ("r", "a"))?.as_deref(), Some("2"));
            assert!(!tx.contains(PAIRS, ("r", "b"))?);
            assert_eq!(tx.get(NUMBERS, 7)?, Some((1, u64::MAX)));
            assert_eq!(tx.get(NAMES, "none")?, None);
            let many = tx.get_many(PAIRS, &[("r", "zz"), ("r", "a"), ("q", "a"), ("r", "a")])?;
            assert_eq!(many, [None, Some("2".to_owned()), None, Some("2".to_owned())]);
            Ok(())
        })
        .unwrap();
        let created = kv.write(|tx| tx.create_table(PAIRS.def())).unwrap();
        assert!(!created, "a table is created once");
    }

    /// Scans return exactly the rows in range, in key order (or reversed), across the pages
    /// they are fetched in, with keys holding the bytes the encoding escapes.
    fn scans_follow_key_order(backend) {
        let dir = tempfile::tempdir().unwrap();
        let kv = backend.kv(dir.path());
        let repos = ["a", "a\0", "a\u{1}", "ab", "b", "é"];
        kv.write(|tx| {
            for repo in repos {
                for i in 0..40u64 {
                    let name = format!("{i:02}");
                    tx.insert(PAIRS, (repo, &name), repo)?;
                    tx.insert(TRIPLES, (repo, &name, "x"), name.as_bytes())?;
                }
            }
            for i in 0..300u64 {
                tx.insert(NUMBERS, i * 3, (i, i))?;
            }
            for repo in repos {
                tx.insert(NAMES, repo, 1)?;
            }
            Ok(())
        })
        .unwrap();
        kv.read(|tx| {
            for repo in repos {
                let rows: Vec<(String, String)> = tx
                    .prefix(PAIRS, &[repo])
                    .keys()
                    .collect::<Result<_, _>>()?;
                let expected: Vec<(String, String)> =
                    (0..40).map(|i| (repo.to_owned(), format!("{i:02}"))).collect();
                assert_eq!(rows, expected, "prefix {repo:?}");
                let after: Vec<String> = tx
                    .prefix(PAIRS, &[repo])
                    .starting(Bound::Excluded((repo, "09")))
                    .map(|row| row.map(|((_, k), _)| k))
                    .collect::<Result<_, _>>()?;
                assert_eq!(after.first().map(String::as_str), Some("10"));
                assert_eq!(after.len(), 30);
                let backwards: Vec<String> = tx
                    .prefix(PAIRS, &[repo])
                    .backwards()
                    .take(3)
                    .map(|row| row.map(|((_, k), _)| k))
                    .collect::<Result<_, _>>()?;
                assert_eq!(backwards, ["39", "38", "37"]);
                let one: Vec<Vec<u8>> = tx
                    .prefix(TRIPLES, &[repo, "07"])
                    .map(|row| row.map(|(_, v)| v))
                    .collect::<Result<_, _>>()?;
                assert_eq!(one, [b"07".to_vec()]);
            }
            let names: Vec<String> = tx.iter(NAMES).keys().collect::<Result<_, _>>()?;
            let mut sorted: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
            sorted.sort();
            assert_eq!(names, sorted, "byte order of the names");
            let all: Vec<u64> = tx.iter(NUMBERS).keys().collect::<Result<_, _>>()?;
            assert_eq!(all, (0..300).map(|i| i * 3).collect::<Vec<_>>());
            let from: Vec<u64> = tx
                .iter(NUMBERS)
                .starting(Bound::Excluded(10))
                .keys()
                .take(3)
                .collect::<Result<_, _>>()?;
            assert_eq!(from, [12, 15, 18]);
            assert_eq!(tx.first(NUMBERS)?.map(|(k, _)| k), Some(0));
            assert_eq!(tx.last(NUMBERS)?, Some((897, (299, 299))));
            let empty: Vec<u64> = tx
                .iter(NUMBERS)
                .starting(Bound::Excluded(897))
                .keys()
                .collect::<Result<_, _>>()?;
            assert!(empty.is_empty());
            Ok(())
        })
        .unwrap();
    }

    /// A read transaction keeps its snapshot while a write commits beside it.
    fn reads_see_one_snapshot(backend) {
        let dir = tempfile::tempdir().unwrap();
        let kv = backend.kv(dir.path());
        kv.write(|tx| tx.insert(NAMES, "n", 1).map(drop)).unwrap();
        let seen = kv
            .read(|tx| {
                let before = tx.get(NAMES, "n")?;
                std::thread::scope(|s| {
                    s.spawn(|| kv.write(|w| w.insert(NAMES, "n", 2).map(drop)).unwrap())
                        .join()
                        .unwrap()
                });
                Ok((before, tx.get(NAMES, "n")?))
            })
            .unwrap();
        assert_eq!(seen, (Some(1), Some(1)));
        assert_eq!(kv.read(|tx| tx.get(NAMES, "n")).unwrap(), Some(2));
    }

    /// Read-modify-write transactions from several threads and from two handles on the same
    /// metadata (two replicas, on PostgreSQL) lose no update: writes run one at a time.
    fn writes_run_one_at_a_time(backend) {
        let dir = tempfile::tempdir().unwrap();
        let first = backend.kv(dir.path());
        // redb allows one handle on its file: the second "replica" is the same handle there.
        let second = match backend.backends.metadata {
            crate::storage::MetadataBackend::Redb => None,
            crate::storage::MetadataBackend::Postgres(_) => Some(backend.kv(dir.path())),
        };
        let handles = [Some(&first), second.as_ref()];
        std::thread::scope(|s| {
            for (i, kv) in handles.iter().cycle().take(6).enumerate() {
                let kv = kv.unwrap_or(&first);
                s.spawn(move || {
                    for _ in 0..15 {
                        kv.write(|tx| {
                            let n = tx.get(NAMES, "counter")?.unwrap_or(0);
                            tx.insert(NAMES, "counter", n + 1)?;
                            tx.insert(NUMBERS, n + 1, (i as u64, 0))?;
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let (counter, numbers) = first
            .read(|tx| {
                let numbers: Vec<u64> = tx.iter(NUMBERS).keys().collect::<Result<_, _>>()?;
                Ok((tx.get(NAMES, "counter")?, numbers))
            })
            .unwrap();
        assert_eq!(counter, Some(90));
        assert_eq!(numbers, (1..=90).collect::<Vec<_>>(), "no gap, no duplicate");
    }

    /// A transaction whose connection the server closes in its middle runs again on a new
    /// connection, whole: its writes from the failed attempt are gone, those of the second
    /// committed once.
    fn a_transaction_that_lost_its_connection_runs_again(backend) {
        let dir = tempfile::tempdir().unwrap();
        let kv = backend.kv(dir.path());
        kv.write(|tx| tx.insert(NAMES, "before", 1).map(drop)).unwrap();
        let attempts = std::cell::Cell::new(0);
        kv.write(|tx| {
            attempts.set(attempts.get() + 1);
            let n = tx.get(NAMES, "before")?.unwrap_or(0);
            tx.insert(NAMES, "attempt", attempts.get())?;
            if attempts.get() == 1 {
                backend.close_connections();
            }
            tx.insert(NAMES, "after", n + 1)?;
            Ok(())
        })
        .unwrap();
        let expected = match backend.backends.metadata {
            crate::storage::MetadataBackend::Redb => 1,
            crate::storage::MetadataBackend::Postgres(_) => 2,
        };
        assert_eq!(attempts.get(), expected);
        kv.read(|tx| {
            assert_eq!(tx.get(NAMES, "attempt")?, Some(expected));
            assert_eq!(tx.get(NAMES, "after")?, Some(2));
            Ok(())
        })
        .unwrap();
    }
}
