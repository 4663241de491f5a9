//! The self-check beside the sealing: every sealed byte is also handed to a second thread,
//! which opens the object as a reader would (key slot, header MAC, every chunk, the
//! decompressor) and returns the length and CRC-32 of what it opened. `wal-push` compares
//! them with the source's before anything is stored, so the guarantee is the one of
//! opening the finished object afterwards, at the cost of a second core instead of wall
//! time.
//!
//! Only for objects whose header is final when sealing starts (master keys): an object
//! sealed to a recipient gets its digest and signature slots rewritten at the end, so
//! [`Tee`] reports that its copy is void and the caller checks the finished bytes instead.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::seal::{self, SealSink};

/// Sealed pieces in flight to the checker at most (each a chunk, about 64 KiB).
const IN_FLIGHT: usize = 8;

/// The checking thread.
pub struct Checker<'s> {
    tx: SyncSender<Vec<u8>>,
    handle: ScopedJoinHandle<'s, Result<(u64, u32)>>,
}

impl<'s> Checker<'s> {
    /// Starts the thread that opens object `key` with `keyring` from the pieces a [`Tee`]
    /// sends.
    ///
    /// # Errors
    /// `Internal` if the thread cannot start.
    pub fn start<'e>(
        scope: &'s Scope<'s, 'e>,
        keyring: &'e Keyring,
        key: &'e str,
    ) -> Result<Checker<'s>> {
        let (tx, rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let handle = std::thread::Builder::new()
            .name("self-check".into())
            .spawn_scoped(scope, move || open_all(rx, keyring, key))
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")))?;
        Ok(Checker { tx, handle })
    }

    /// Waits for the checker (after the [`Tee`] was finished) and compares what it opened
    /// with the source's `size` and `crc`.
    ///
    /// # Errors
    /// `Internal`: the sealed object does not open to the source bytes.
    pub fn finish(self, key: &str, size: u64, crc: u32) -> Result<()> {
        drop(self.tx);
        let opened = self
            .handle
            .join()
            .map_err(|_| Error::new(ErrorKind::Internal, "the self-check thread panicked"))?;
        match opened {
            Ok((total, c)) if total == size && c == crc => Ok(()),
            Ok(_) => Err(mismatch(key, "it opens to other bytes")),
            Err(e) => Err(mismatch(key, &e.to_string())),
        }
    }
}

fn mismatch(key: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "{key}: self-check failed: the sealed object does not open to the source bytes ({why})"
        ),
    )
    .hint("this is a bug or a hardware fault: report it")
}

fn open_all(rx: Receiver<Vec<u8>>, keyring: &Keyring, key: &str) -> Result<(u64, u32)> {
    let src = Pieces {
        rx,
        cur: Vec::new(),
        pos: 0,
    };
    let mut reader = seal::open(src, keyring, key).map_err(|e| e.into_error(key))?;
    let mut hasher = crc32fast::Hasher::new();
    let total = seal::for_each_block(&mut reader, key, |block| {
        hasher.update(block);
        Ok(())
    })?;
    Ok((total, hasher.finalize()))
}

/// A `Read` over the pieces sent through the channel; ends when every sender is gone.
struct Pieces {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Pieces {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.cur = piece;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = (self.cur.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A sink that writes to `inner` and sends a copy of every byte to the checker.
pub struct Tee<W: SealSink> {
    inner: W,
    tx: Option<SyncSender<Vec<u8>>>,
    /// The checker saw exactly the bytes `inner` holds.
    whole: bool,
}

impl<W: SealSink> Tee<W> {
    /// A tee into `inner` and, if given, `checker`.
    pub fn new(inner: W, checker: Option<&Checker<'_>>) -> Tee<W> {
        let tx = checker.map(|c| c.tx.clone());
        Tee {
            whole: tx.is_some(),
            inner,
            tx,
        }
    }

    /// The sealed object, and whether the checker saw all of it as it is.
    pub fn finish(self) -> (W, bool) {
        (self.inner, self.whole)
    }
}

impl<W: SealSink> Write for Tee<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.inner.write_all(data)?;
        if let Some(tx) = &self.tx {
            if tx.send(data.to_vec()).is_err() {
                // The checker stopped early (it will say why); the caller checks the whole.
                self.tx = None;
                self.whole = false;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: SealSink> SealSink for Tee<W> {
    fn rewrite_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tx = None;
        self.whole = false;
        self.inner.rewrite_start(bytes)
    }
}
