//! Health: `ping` and the backend report.

use super::*;

pub(super) async fn ping(_db: &MemoryStore) -> StoreResult<()> {
    Ok(())
}

pub(super) async fn backend_info(db: &MemoryStore) -> StoreResult<BackendInfo> {
    let g = db.lock()?;
    let mut details = BTreeMap::new();
    details.insert("clients".into(), g.clients.len().to_string());
    details.insert("persistence".into(), "none (process memory)".into());
    Ok(BackendInfo {
        kind: "memory".into(),
        role: "standalone".into(),
        details,
    })
}
