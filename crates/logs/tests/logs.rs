//! Run log files: appending, the size limit and its marker, reading by offset, removal.

use std::io::ErrorKind;
use std::time::Duration;

use tug_logs::{LogFiles, LogWriter};

fn logs() -> (tempfile::TempDir, LogFiles) {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the first writer creates it.
    let logs = LogFiles::new(dir.path().join("logs"));
    (dir, logs)
}

async fn contents(logs: &LogFiles, run: u64) -> String {
    String::from_utf8(logs.read(run, 0, usize::MAX).await.unwrap()).unwrap()
}

#[test]
fn writer_and_its_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let logs = LogFiles::new("/nonexistent");
    send(&logs.writer(1, 10));
    send(&logs.read(1, 0, 10));
    send(&logs.remove(&[1]));
    fn send_type<T: Send + 'static>() {}
    send_type::<LogWriter>();
    send_type::<LogFiles>();
    assert_eq!(logs.path(42), std::path::Path::new("/nonexistent/42.log"));
}

#[tokio::test]
async fn writes_are_readable_at_once_by_offset() {
    let (_dir, logs) = logs();
    assert_eq!(logs.read(7, 0, 10).await.unwrap_err().kind(), ErrorKind::NotFound, "no log yet");
    let mut w = logs.writer(7, 1 << 20).await.unwrap();
    w.write(b"hello\n").await.unwrap();
    // No flush: a follower sees output as soon as write returns.
    assert_eq!(logs.read(7, 0, 100).await.unwrap(), b"hello\n");
    w.write(b"world\n").await.unwrap();
    assert_eq!(logs.read(7, 6, 3).await.unwrap(), b"wor");
    assert_eq!(logs.read(7, 9, 100).await.unwrap(), b"ld\n");
    assert_eq!(logs.read(7, 12, 100).await.unwrap(), b"", "empty at the end");
    assert_eq!(logs.read(7, 1000, 100).await.unwrap(), b"", "empty past the end");
    assert_eq!(logs.read(7, 0, 0).await.unwrap(), b"");
    assert_eq!((w.len(), w.dropped()), (12, 0));
    w.flush().await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(logs.len(7).await.unwrap(), 12);
    assert_eq!(contents(&logs, 7).await, "hello\nworld\n", "no marker when nothing was dropped");
}

#[tokio::test]
async fn output_past_the_limit_is_dropped_and_counted_in_one_marker() {
    let (_dir, logs) = logs();
    let mut w = logs.writer(1, 10).await.unwrap();
    w.write(b"0123456789abcdef").await.unwrap();
    w.write(b"xyz").await.unwrap();
    assert_eq!(contents(&logs, 1).await, "0123456789", "the limit is exact");
    assert_eq!(w.dropped(), 9);
    w.finish().await.unwrap();
    assert_eq!(contents(&logs, 1).await, "0123456789\n[tug: log truncated at 10 bytes; 9 more bytes dropped]\n");
}

#[tokio::test]
async fn attempts_append_to_the_same_file_under_one_limit() {
    let (_dir, logs) = logs();
    let mut first = logs.writer(3, 20).await.unwrap();
    first.write(b"attempt one").await.unwrap(); // no trailing newline
    first.finish().await.unwrap();

    let mut second = logs.writer(3, 20).await.unwrap();
    assert_eq!(second.len(), 11, "the writer knows what is in the file");
    second.line("--- attempt 2 ---").await.unwrap();
    assert_eq!(contents(&logs, 3).await, "attempt one\n--- attempt 2 ---\n", "a note starts its own line");
    second.write(b"more output").await.unwrap(); // 30 bytes in the file: over the limit already
    second.line("--- attempt 3 ---").await.unwrap();
    second.write(b"and more").await.unwrap();
    second.finish().await.unwrap();
    assert_eq!(
        contents(&logs, 3).await,
        "attempt one\n--- attempt 2 ---\n\
         [tug: log truncated at 20 bytes; 11 more bytes dropped]\n\
         --- attempt 3 ---\n\
         [tug: log truncated at 20 bytes; 8 more bytes dropped]\n",
        "each marker reports the output dropped since the previous note, in order"
    );
}

#[tokio::test]
async fn a_partial_write_at_the_limit_ends_mid_line() {
    let (_dir, logs) = logs();
    let mut w = logs.writer(4, 4).await.unwrap();
    w.write(b"ab\ncd\nef").await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(contents(&logs, 4).await, "ab\nc\n[tug: log truncated at 4 bytes; 4 more bytes dropped]\n");
    let mut w = logs.writer(5, 0).await.unwrap();
    w.write(b"everything goes").await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(contents(&logs, 5).await, "[tug: log truncated at 0 bytes; 15 more bytes dropped]\n");
}

#[tokio::test]
async fn a_dropped_writer_still_writes_its_marker() {
    let (_dir, logs) = logs();
    let mut w = logs.writer(6, 3).await.unwrap();
    w.write(b"abcdef").await.unwrap();
    drop(w);
    let want = "abc\n[tug: log truncated at 3 bytes; 3 more bytes dropped]\n";
    for _ in 0..100 {
        if contents(&logs, 6).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("marker never written: {:?}", contents(&logs, 6).await);
}

#[tokio::test]
async fn remove_ignores_missing_logs() {
    let (_dir, logs) = logs();
    for run in [1, 2] {
        let mut w = logs.writer(run, 100).await.unwrap();
        w.write(b"x").await.unwrap();
        w.finish().await.unwrap();
    }
    logs.remove(&[1, 2, 999]).await.unwrap();
    for run in [1, 2] {
        assert_eq!(logs.read(run, 0, 1).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert!(!logs.path(run).exists());
    }
    logs.remove(&[]).await.unwrap();
    // A directory that never existed is fine too.
    LogFiles::new("/nonexistent/tug-logs").remove(&[1]).await.unwrap();
}

#[tokio::test]
async fn logs_past_their_age_are_removed_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogFiles::new(dir.path().join("logs"));
    assert_eq!(logs.remove_older_than(std::time::Duration::from_secs(1)).await.unwrap(), 0, "no directory yet");
    for run in [1, 2] {
        let mut w = logs.writer(run, 1 << 20).await.unwrap();
        w.write(b"output\n").await.unwrap();
        w.finish().await.unwrap();
    }
    std::fs::write(dir.path().join("logs/notes.txt"), "not a log").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
    for path in [logs.path(1), dir.path().join("logs/notes.txt")] {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
    }
    let week = std::time::Duration::from_secs(7 * 86_400);
    assert_eq!(logs.remove_older_than(week).await.unwrap(), 1);
    assert!(!logs.path(1).exists());
    assert_eq!(contents(&logs, 2).await, "output\n");
    assert!(dir.path().join("logs/notes.txt").exists(), "only run logs are removed");
}
