//! A run's log on a real full disk (a small tmpfs): the writer drops output instead of failing,
//! and says so in a marker once there is room again.

use tug_logs::LogFiles;

#[tokio::test]
async fn a_full_disk_truncates_the_log_with_a_marker_instead_of_failing() {
    let Some(disk) = tug_store::testing::Tmpfs::mount("1m") else { return };
    let logs = LogFiles::new(disk.path().join("logs"));
    let mut log = logs.writer(7, 1 << 30).await.unwrap();
    log.write(b"before\n").await.unwrap();
    disk.fill("filler");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..8 {
        log.write(&chunk).await.expect("a full disk is not the run's failure");
    }
    log.line("--- attempt 2 ---").await.expect("nor are tug's own notes");
    assert!(log.dropped_full() > 0, "the output that did not fit was counted");
    disk.free("filler");
    log.finish().await.unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(disk.path().join("logs").join("7.log")).unwrap_or_default()).into_owned();
    assert!(text.starts_with("before\n"), "{text:.200}");
    assert!(text.contains("[tug: the disk is full; ") && text.contains(" bytes of output dropped]"), "{}", &text[text.len().saturating_sub(300)..]);
}
