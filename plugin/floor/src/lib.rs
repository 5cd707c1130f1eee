//! A proxy-wasm HTTP filter that does nothing, with the exports of Tollgate's filter
//! (`plugin/filter/src/exports.rs`): every request continues, no header is read, no
//! hostcall is made. `make bench-gateway` runs it as the "Wasm floor" beside Tollgate's
//! filter, in the same interleaved rounds: what Envoy's Wasm extension and V8 cost per
//! request for a filter with these callbacks before it does any work (per stream: context
//! create, request headers, response headers, delete), so that the distance to Tollgate is
//! the filter's own work. Never shipped.

#[cfg(target_arch = "wasm32")]
mod exports {
    extern "C" {
        fn __wasm_call_ctors();
    }

    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: the linker's constructor list, run once, before any other export.
        unsafe { __wasm_call_ctors() };
    }

    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    /// The host's allocator (never used: the floor asks the host for nothing).
    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        let mut v: Vec<u8> = Vec::with_capacity(size);
        let p = v.as_mut_ptr();
        std::mem::forget(v);
        p
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
        true
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> bool {
        true
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context: u32, _root: u32) {}

    /// `Action::Continue`.
    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _eos: bool) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(_context: u32, _headers: usize, _eos: bool) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(_context: u32) {}
}
