//! librdkafka's batch consume API over one queue: `rd_kafka_consume_batch_queue` hands over up
//! to N messages with one lock of the queue, where rdkafka's `poll` takes them one call, one
//! lock and one event conversion at a time. The reader ([`crate::source::kafka`]) and the
//! raw-consume ceiling (`benches/raw_consume.rs`) both read through it, so the ceiling is the
//! same consumer minus citystream's work.
//!
//! The messages are borrowed for the length of a callback and destroyed right after it (also
//! when the callback panics), so no message outlives its batch.
//!
//! One difference from `poll`: librdkafka moves a partition's position (`Consumer::position`)
//! to offset + 1 of *every* message of a batch (`rd_kafka_q_serve_rkmessages`), an
//! end-of-partition event included, so after the event the position is one past the end. A
//! partition's queue remembers that event and [`BatchQueue::position`] corrects for it.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

/// One queue of a consumer, read in batches.
pub struct BatchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Keeps the client alive for as long as the queue is: librdkafka requires the queue to be
    /// destroyed before its client.
    _consumer: Arc<BaseConsumer<C>>,
    batch: Vec<*mut rdsys::rd_kafka_message_t>,
    /// The offset of the last end-of-partition event with no record after it.
    eof_at: Option<i64>,
}

// SAFETY: librdkafka's queue handles and messages may be used from any thread; the messages in
// `batch` are only held during `consume`, which takes `&mut self`.
unsafe impl<C: ConsumerContext + 'static> Send for BatchQueue<C> {}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// The queue of one assigned partition, taken off the consumer's own queue (what rdkafka's
    /// `split_partition_queue` does): its messages arrive only here. `None` if librdkafka knows
    /// no such partition or the topic name holds a NUL.
    pub fn partition(consumer: &Arc<BaseConsumer<C>>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the topic is NUL-terminated.
        let queue = NonNull::new(unsafe { rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition) })?;
        // SAFETY: `queue` is a valid queue; forwarding to NULL stops forwarding to the consumer queue.
        unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut()) };
        Some(BatchQueue { queue, _consumer: consumer.clone(), batch: Vec::new(), eof_at: None })
    }

    /// The consumer's own queue: every assigned partition not split off.
    pub fn consumer(consumer: &Arc<BaseConsumer<C>>) -> Option<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives.
        let queue = NonNull::new(unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) })?;
        Some(BatchQueue { queue, _consumer: consumer.clone(), batch: Vec::new(), eof_at: None })
    }

    /// The partition's position given the client's (`Consumer::position`), for a queue of one
    /// partition ([`BatchQueue::partition`]): past an end-of-partition event with no record
    /// after it, the event's offset, not librdkafka's one past it. (A transaction marker after
    /// the event brings another event, further on.)
    pub fn position(&self, client: i64) -> i64 {
        match self.eof_at {
            Some(end) if client > end => end,
            _ => client,
        }
    }

    /// Takes up to `max` messages, waiting up to `timeout` for the first (zero: not at all), and
    /// hands each to `f` in queue order. Returns how many messages there were (errors and
    /// end-of-partition events included).
    pub fn consume(&mut self, max: usize, timeout: Duration, mut f: impl FnMut(BatchMessage<'_>)) -> usize {
        let max = max.max(1);
        self.batch.clear();
        self.batch.reserve(max);
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `batch` has room for `max` pointers; librdkafka writes at most that many.
        let n = unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), timeout_ms, self.batch.as_mut_ptr(), max) };
        let Ok(n) = usize::try_from(n) else { return 0 };
        // SAFETY: librdkafka initialized the first `n` entries.
        unsafe { self.batch.set_len(n) };
        let batch = Destroy(&mut self.batch);
        for &m in batch.0.iter() {
            // SAFETY: every pointer is a live message until `Destroy` runs.
            let m = BatchMessage(unsafe { &*m });
            match m.error() {
                None => self.eof_at = None,
                Some(RDKafkaErrorCode::PartitionEOF) => self.eof_at = Some(m.offset()),
                Some(_) => {}
            }
            f(m);
        }
        n
    }
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: the queue is ours and its client still alive (`_consumer` drops after this).
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Destroys the messages of a batch, also when the callback panics.
struct Destroy<'a>(&'a mut Vec<*mut rdsys::rd_kafka_message_t>);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        for m in self.0.drain(..) {
            // SAFETY: each message came from `rd_kafka_consume_batch_queue` and is destroyed once.
            unsafe { rdsys::rd_kafka_message_destroy(m) };
        }
    }
}

/// One message of a batch: a record, or an event of its partition (end of partition, a fetch
/// error) when [`BatchMessage::error`] is set.
pub struct BatchMessage<'a>(&'a rdsys::rd_kafka_message_t);

impl<'a> BatchMessage<'a> {
    /// The error or event this message carries (`PartitionEOF` at the end of a partition).
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.0.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| self.0.err.into())
    }

    /// The record's offset (for an event: where in the partition it happened).
    pub fn offset(&self) -> i64 {
        self.0.offset
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.0.partition
    }

    /// The value (empty when there is none).
    pub fn payload(&self) -> &'a [u8] {
        bytes(self.0.payload, self.0.len)
    }

    /// The key (empty when there is none).
    pub fn key(&self) -> &'a [u8] {
        bytes(self.0.key, self.0.key_len)
    }

    /// The topic's name (empty if librdkafka has none, or it is not UTF-8).
    pub fn topic(&self) -> &'a str {
        if self.0.rkt.is_null() {
            return "";
        }
        // SAFETY: a message's topic handle and its name live as long as the message.
        unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.0.rkt)) }.to_str().unwrap_or_default()
    }

    /// librdkafka's text for the error, if any.
    pub fn error_text(&self) -> String {
        match self.error() {
            None => String::new(),
            // SAFETY: the message is live; librdkafka returns a NUL-terminated string it owns.
            Some(code) => unsafe {
                let p = rdsys::rd_kafka_message_errstr(self.0);
                if p.is_null() { code.to_string() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
            },
        }
    }
}

fn bytes<'a>(ptr: *mut std::ffi::c_void, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: librdkafka's payload and key pointers are valid for `len` bytes while the message lives.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}
