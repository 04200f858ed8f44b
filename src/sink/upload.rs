//! Streaming one object to an object store, knowing nothing of Parquet.
//!
//! Bytes accumulate until `part_size`; a small object is then written with a single PUT when
//! it is finished, a large one becomes a multipart upload whose parts leave as they fill (so
//! memory per open file stays near `part_size`), completed when the file is finished. An
//! object becomes visible only when complete: a reader never sees half a file. Transient
//! store errors are retried with backoff by `object_store` itself (see [`crate::lake::retry_config`]);
//! a completion whose answer was lost is recognised by the finished object being there.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Parts in flight per upload before `write` waits (backpressure).
const MAX_PARTS_IN_FLIGHT: usize = 4;

/// One object being written.
pub struct ObjectUpload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    part_size: usize,
    buffer: Vec<u8>,
    multipart: Option<WriteMultipart>,
    bytes: u64,
}

impl ObjectUpload {
    /// Starts writing `path`; nothing is sent until `part_size` bytes or `finish`.
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, part_size: usize) -> Self {
        ObjectUpload { store, path, part_size, buffer: Vec::new(), multipart: None, bytes: 0 }
    }

    /// The object's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far (the object's size once finished).
    pub fn size(&self) -> u64 {
        self.bytes
    }

    /// Bytes held in memory, not yet handed to the store.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Appends bytes; may start the multipart upload and send parts (blocking only to start
    /// it and when `MAX_PARTS_IN_FLIGHT` parts are already in flight).
    pub fn write(&mut self, rt: &Handle, bytes: &[u8]) -> Result<(), object_store::Error> {
        self.bytes += bytes.len() as u64;
        if let Some(mp) = &mut self.multipart {
            let _guard = rt.enter();
            mp.write(bytes);
            return rt.block_on(mp.wait_for_capacity(MAX_PARTS_IN_FLIGHT));
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= self.part_size {
            let upload = rt.block_on(self.store.put_multipart(&self.path))?;
            let mut mp = WriteMultipart::new_with_chunk_size(upload, self.part_size);
            let _guard = rt.enter();
            mp.write(&std::mem::take(&mut self.buffer));
            self.multipart = Some(mp);
        }
        Ok(())
    }

    /// Completes the object in the background; the handle yields its size in bytes.
    pub fn finish(self, rt: &Handle) -> JoinHandle<Result<u64, object_store::Error>> {
        let ObjectUpload { store, path, buffer, multipart, bytes, .. } = self;
        rt.spawn(async move {
            match multipart {
                Some(mp) => {
                    if let Err(e) = mp.finish().await {
                        // A retried CompleteMultipartUpload whose first attempt succeeded gets
                        // "no such upload": the object is then there, whole. Object names are
                        // unique to this writer, so an object of our size is ours.
                        match store.head(&path).await {
                            Ok(meta) if meta.size == bytes => {
                                tracing::info!(path = %path, "multipart upload found complete after a failed completion answer");
                            }
                            _ => return Err(e),
                        }
                    }
                }
                None => {
                    // A plain PUT overwrites: object_store retries it on any transient failure.
                    store.put(&path, PutPayload::from(buffer)).await?;
                }
            }
            Ok(bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn small_and_multipart_objects_arrive_whole() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut small = ObjectUpload::new(store.clone(), Path::from("a/small"), 1 << 20);
        small.write(rt.handle(), b"hello ").unwrap();
        small.write(rt.handle(), b"world").unwrap();
        assert_eq!(rt.block_on(small.finish(rt.handle())).unwrap().unwrap(), 11);

        let mut big = ObjectUpload::new(store.clone(), Path::from("a/big"), 5 << 20);
        let chunk = vec![7u8; 3 << 20];
        for _ in 0..5 {
            big.write(rt.handle(), &chunk).unwrap();
            assert!(big.buffered() < 5 << 20, "memory stays under one part");
        }
        assert!(rt.block_on(store.head(&Path::from("a/big"))).is_err(), "invisible until finished");
        assert_eq!(rt.block_on(big.finish(rt.handle())).unwrap().unwrap(), 15 << 20);
        let got = rt.block_on(async { store.get(&Path::from("a/big")).await.unwrap().bytes().await.unwrap() });
        assert_eq!(got.len(), 15 << 20);
        let got = rt.block_on(async { store.get(&Path::from("a/small")).await.unwrap().bytes().await.unwrap() });
        assert_eq!(&got[..], b"hello world");
    }
}
