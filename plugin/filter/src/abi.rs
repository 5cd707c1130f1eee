//! The proxy-wasm ABI (0.2.1) hostcalls the filter makes, each behind a small safe wrapper
//! that never panics: an unexpected status is an `Err`, a value that is not there is `None`.
//!
//! The filter does not use the proxy-wasm Rust SDK. The SDK exports every callback of the
//! ABI (request and response bodies, trailers, `on_done`, `on_log`, ...) whatever the
//! filter implements, and Envoy calls into V8 for each exported callback of every stream;
//! proxy-wasm-cpp-host skips a callback the module does not export (`ContextBase::onLog`:
//! `if (wasm_->on_log_) ...`). The filter's own exports (`exports.rs`) are only the
//! callbacks it needs. The SDK's wrappers also `panic!` on an unexpected status, which
//! aborts the VM and with it every later request of the worker.
//!
//! Buffers the host returns are allocated through the module's `proxy_on_memory_allocate`
//! (`exports.rs`: a `Vec<u8>` of exactly the requested capacity), so they are taken over
//! with `Vec::from_raw_parts(ptr, size, size)`.

/// `proxy_log` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Header maps (`proxy_*_header_map_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

/// Buffers (`proxy_get_buffer_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// What `proxy_on_request_headers` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// `Status::Ok`.
const OK: u32 = 0;
/// `Status::NotFound`.
const NOT_FOUND: u32 = 1;
/// `Status::CasMismatch`.
pub const CAS_MISMATCH: u32 = 8;
/// `MetricType::Counter`.
const COUNTER: u32 = 0;
/// `StreamType::HttpRequest` (`proxy_continue_stream`).
const STREAM_HTTP_REQUEST: u32 = 0;

/// A hostcall's status other than `Ok` (the ABI's `WasmResult`).
pub type Status = u32;

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_size: *mut usize)
            -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
            out_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            out_token: *mut u32,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            out_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    }
}

/// Native builds (the glue's unit tests) have no host: every hostcall fails.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
mod raw {
    const NO_HOST: u32 = 10; // InternalFailure
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_buffer_bytes(
        _: u32,
        _: usize,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_add_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_property(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_shared_data(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
        _: *mut u32,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_shared_data(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: u32,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_continue_stream(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_http_call(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: u32,
        _: *mut u32,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_effective_context(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        NO_HOST
    }
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Take over a buffer the host returned: `Ok(None)` for NotFound or a null pointer.
///
/// # Safety
/// On `Ok`, `data`/`size` must describe a buffer the host allocated with the module's
/// `proxy_on_memory_allocate` (or be null).
unsafe fn take(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, Status> {
    match status {
        OK if data.is_null() => Ok(None),
        // SAFETY: the caller's contract: a `Vec<u8>` allocation of capacity `size`.
        OK => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
        NOT_FOUND => Ok(None),
        s => Err(s),
    }
}

pub fn log(level: LogLevel, msg: &str) {
    // SAFETY: a pointer and length of a live string.
    let _ = unsafe { raw::proxy_log(level as u32, msg.as_ptr(), msg.len()) };
}

/// The host's wall clock, Unix nanoseconds.
pub fn now_nanos() -> Result<u64, Status> {
    let mut t = 0u64;
    // SAFETY: a pointer to a live u64.
    check(unsafe { raw::proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    // SAFETY: no pointer.
    check(unsafe { raw::proxy_set_tick_period_milliseconds(ms) })
}

pub fn get_buffer(buffer: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: out-pointers to live locals; the result is taken over as the ABI allocates it.
    unsafe {
        let s = raw::proxy_get_buffer_bytes(buffer as u32, start, max, &mut data, &mut size);
        take(s, data, size)
    }
}

/// A header map, serialized (see `headers::decode_header_map`).
pub fn get_header_map_pairs(map: MapType) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `get_buffer`.
    unsafe {
        let s = raw::proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
        take(s, data, size)
    }
}

/// One header's (first) value, as bytes.
pub fn get_header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `get_buffer`.
    unsafe {
        let s = raw::proxy_get_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        );
        take(s, data, size)
    }
}

pub fn add_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live strings.
    check(unsafe {
        raw::proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: a pointer and length of a live string.
    check(unsafe { raw::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property (`path` parts, e.g. `["source", "address"]`), as bytes.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let serialized = path.join("\0");
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in `get_buffer`.
    unsafe {
        let s =
            raw::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size);
        take(s, data, size)
    }
}

/// A shared-data value and its CAS (`None` when absent).
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY: as in `get_buffer`.
    unsafe {
        let s = raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas);
        if s == NOT_FOUND {
            return Ok((None, None));
        }
        let value = take(s, data, size)?;
        Ok((value, (cas != 0).then_some(cas)))
    }
}

/// Set a shared-data value; `cas` 0 (or `None`): unconditionally. `Err(CAS_MISMATCH)` when
/// the value changed since `cas` was read.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live buffers.
    check(unsafe {
        raw::proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Resume the current (paused) request.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointer.
    check(unsafe { raw::proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Serialize header pairs as the ABI reads them (`u32` count, a `u32` name length and
/// value length per pair, then each name and value followed by a NUL byte).
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Answer the current request locally.
pub fn send_local_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    let h = serialize_pairs(headers);
    // SAFETY: pointers and lengths of live buffers (no details: null, 0).
    check(unsafe {
        raw::proxy_send_local_response(
            u32::from(status),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    })
}

/// Dispatch an HTTP call to `cluster`; its answer comes to `proxy_on_http_call_response`
/// of the context running now. Returns the call's token.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u32,
) -> Result<u32, Status> {
    let h = serialize_pairs(headers);
    let trailers = serialize_pairs(&[]);
    let body = body.unwrap_or(&[]);
    let mut token = 0u32;
    // SAFETY: pointers and lengths of live buffers, an out-pointer to a live u32.
    check(unsafe {
        raw::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            h.as_ptr(),
            h.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Make `context_id` the context later hostcalls act on (a held stream, from the root).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointer.
    check(unsafe { raw::proxy_set_effective_context(context_id) })
}

/// Define a counter; returns its id.
pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: a pointer and length of a live string, an out-pointer to a live u32.
    check(unsafe { raw::proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
    // SAFETY: no pointer.
    check(unsafe { raw::proxy_increment_metric(id, delta) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::decode_header_map;

    #[test]
    fn serialized_pairs_decode_back() {
        let pairs = [
            (":status", "401"),
            ("www-authenticate", "Bearer"),
            ("e", ""),
        ];
        let decoded = decode_header_map(&serialize_pairs(&pairs));
        let want: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(decoded, want);
        assert_eq!(serialize_pairs(&[]), vec![0, 0, 0, 0]);
    }

    #[test]
    fn without_a_host_every_call_is_an_error_not_a_panic() {
        assert!(now_nanos().is_err());
        assert!(get_header_map_pairs(MapType::HttpRequestHeaders).is_err());
        assert!(get_shared_data("k").is_err());
        assert!(set_shared_data("k", b"v", None).is_err());
        assert!(http_call("c", &[(":path", "/")], None, 100).is_err());
        assert!(send_local_response(401, &[], b"").is_err());
    }
}
