//! Directories and records that must not be trusted.

use std::os::unix::fs::PermissionsExt;

use tether_registry::{FileRegistry, Registry};

use crate::{is_root, temp_registry};

#[test]
fn a_symlinked_directory_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let real = temp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = temp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = FileRegistry::at(&link).unwrap_err().to_string();
    assert!(err.contains("symlink") && err.contains("link"), "{err}");
}

#[test]
fn a_directory_open_to_others_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("open");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = FileRegistry::at(&dir).unwrap_err().to_string();
    assert!(err.contains("0755") && err.contains("open"), "{err}");
}

#[test]
fn a_directory_of_another_user_is_refused() {
    if !is_root() {
        return; // Only root can give a directory away.
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let err = FileRegistry::at(&dir).unwrap_err().to_string();
    assert!(err.contains("uid 65534"), "{err}");
}

#[test]
fn a_new_directory_is_private() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("a").join("registry");
    let registry = FileRegistry::at(&dir).unwrap();
    assert_eq!(registry.path(), dir);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}

#[tokio::test]
async fn untrustworthy_records_are_skipped_and_counted() {
    let (temp, path, registry) = temp_registry();
    let id = |n: u8| format!("{n:032x}");
    let lease = registry.register(crate::record("good", 0)).await.unwrap();
    let good_json = serde_json::to_string(lease.instance()).unwrap();
    let mine = path.join(format!("good.{}.json", lease.instance().id));
    let mode = std::fs::metadata(&mine).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1600, "private, and sticky against XDG clean-up");

    // A symlink to a well-formed record elsewhere.
    let elsewhere = temp.path().join("elsewhere.json");
    std::fs::write(&elsewhere, &good_json).unwrap();
    std::os::unix::fs::symlink(&elsewhere, path.join(format!("link.{}.json", id(1)))).unwrap();
    // Too large (64 KiB + 1 of valid-looking JSON padding).
    let big = format!("{}{}", " ".repeat(64 * 1024 + 1), good_json);
    std::fs::write(path.join(format!("big.{}.json", id(2))), big).unwrap();
    // Not JSON, truncated JSON, and a record under another's file name.
    std::fs::write(path.join(format!("bad.{}.json", id(3))), "\0\u{1}garbage").unwrap();
    std::fs::write(
        path.join(format!("cut.{}.json", id(4))),
        &good_json[..good_json.len() / 2],
    )
    .unwrap();
    std::fs::write(path.join(format!("good.{}.json", id(5))), &good_json).unwrap();
    let mut expected = 5;
    if is_root() {
        let theirs = path.join(format!("good.{}.json", id(6)));
        std::fs::write(&theirs, &good_json).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        expected += 1;
    }

    let listed = registry.list().await.unwrap();
    assert_eq!(listed, vec![lease.instance().clone()]);
    assert_eq!(registry.skipped(), expected);
    // Skipped, not judged: nothing of anybody else's is removed.
    assert_eq!(crate::files(&path).len(), expected as usize + 1);
}
