//! Dropping the read-only pages of the program and of its shared libraries (code, read-only
//! data) from the resident set, so that a long-running process keeps resident only the code it
//! goes on running.
//!
//! Only the pages of the loaded objects' read-only segments are dropped: they are never
//! written, so nothing is lost; a page touched again comes back on its own from the page
//! cache (a minor fault, no read from the file: they are not evicted). The writable segments
//! (relocated pointers among them, `RELRO`) and objects whose code the loader relocated in
//! place (`TEXTREL`) are left alone: their pages differ from the file's.
//!
//! A fault maps the whole page-cache folio around the page (up to 32 pages here, on 6.18), so
//! unmapped code comes back in wide windows: what stays resident is somewhat more than what
//! runs.

/// Drops the read-only pages of every loaded object (the program, the C library and the
/// others) from the resident set.
pub fn shed() {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    imp::shed();
}

// Why unsafe: the loader's list of objects and their program headers come as raw pointers,
// and `madvise` is a plain C call.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[allow(unsafe_code)]
mod imp {
    use std::ffi::{CStr, c_int, c_void};

    /// `d_tag` values of the dynamic section (`<elf.h>`).
    const DT_NULL: i64 = 0;
    const DT_TEXTREL: i64 = 22;
    const DT_FLAGS: i64 = 30;
    const DF_TEXTREL: u64 = 0x4;

    /// One entry of an object's dynamic section (`Elf64_Dyn`).
    #[repr(C)]
    struct Dyn {
        tag: i64,
        val: u64,
    }

    /// What the walk over the loaded objects collects: dropping a range as soon as it is found
    /// would fault the next object's headers straight back (the walk reads them).
    struct Walk {
        page: usize,
        ranges: Vec<(usize, usize)>,
    }

    pub(super) fn shed() {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut walk = Walk {
            page,
            ranges: Vec::with_capacity(32),
        };
        // SAFETY: the callback only reads what the loader hands it, during the call.
        unsafe { libc::dl_iterate_phdr(Some(each_object), (&raw mut walk).cast()) };
        for (start, len) in walk.ranges {
            let addr = start as *mut c_void;
            // SAFETY: whole pages of a read-only, file-backed segment of a loaded object:
            // dropping them changes what is resident, not what is read.
            unsafe {
                libc::madvise(addr, len, libc::MADV_RANDOM);
                libc::madvise(addr, len, libc::MADV_DONTNEED);
            }
        }
    }

    /// Collects one loaded object's read-only segments; `data` points at the [`Walk`].
    unsafe extern "C" fn each_object(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid record for the duration of the call, and `data`
        // is the walk `shed` passed, not otherwise borrowed meanwhile.
        let (info, walk) = unsafe { (&*info, &mut *data.cast::<Walk>()) };
        // SAFETY: as above; the loader's name is a C string (empty for the program itself).
        let name = (!info.dlpi_name.is_null()).then(|| unsafe { CStr::from_ptr(info.dlpi_name) });
        // The vDSO is the kernel's, not a file's.
        if name.is_some_and(|n| n.to_bytes().starts_with(b"linux-vdso")) {
            return 0;
        }
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: the loader's program headers, `dlpi_phnum` of them.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let base = info.dlpi_addr as usize;
        if phdrs
            .iter()
            .any(|p| p.p_type == libc::PT_DYNAMIC && relocates_text(base + p.p_vaddr as usize))
        {
            return 0;
        }
        let page = walk.page;
        for p in phdrs {
            if p.p_type != libc::PT_LOAD || p.p_flags & libc::PF_W != 0 {
                continue;
            }
            // Whole pages of the file's bytes only: a page shared with a writable segment, or
            // the zero-filled tail past the file's end, may differ from the file.
            let start = (base + p.p_vaddr as usize).next_multiple_of(page);
            let end = (base + p.p_vaddr as usize + p.p_filesz as usize) & !(page - 1);
            if start < end {
                walk.ranges.push((start, end - start));
            }
        }
        0
    }

    /// Whether the object whose dynamic section is at `dynamic` had its code relocated in
    /// place at load (its code pages then differ from the file's).
    fn relocates_text(dynamic: usize) -> bool {
        let mut entry = dynamic as *const Dyn;
        loop {
            // SAFETY: a loaded object's dynamic section, which ends with a `DT_NULL` entry.
            let d = unsafe { &*entry };
            match d.tag {
                DT_NULL => return false,
                DT_TEXTREL => return true,
                DT_FLAGS if d.val & DF_TEXTREL != 0 => return true,
                _ => {}
            }
            // SAFETY: not past the `DT_NULL` entry.
            entry = unsafe { entry.add(1) };
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Resident KiB of this process's file-backed mappings whose path contains `part`.
    fn resident_kb(part: &str) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut total = 0;
        let mut counting = false;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("Rss:"), Some(kb)) if counting => total += kb.parse::<u64>().unwrap(),
                // A mapping's first line: its range, then perms, offset, device, inode, path.
                (Some(range), Some(_)) if range.contains('-') && !range.ends_with(':') => {
                    counting = words.nth(3).is_some_and(|path| path.contains(part));
                }
                _ => {}
            }
        }
        total
    }

    #[test]
    fn read_only_pages_leave_the_resident_set_and_come_back_when_run() {
        let name =
            "code_pages::tests::read_only_pages_leave_the_resident_set_and_come_back_when_run";
        if !crate::serve::tests::alone(name) {
            return;
        }
        let (all, libc) = (resident_kb("/"), resident_kb("/libc.so"));
        super::shed();
        let (all_after, libc_after) = (resident_kb("/"), resident_kb("/libc.so"));
        assert!(
            all_after + 512 <= all,
            "shedding left {all_after} of {all} KiB resident"
        );
        // The C library's pages go too (a static build has none of its own).
        assert!(
            libc == 0 || libc_after < libc,
            "the C library kept {libc_after} of {libc} KiB"
        );
        // The code runs on: what it touches comes back, from this program and the libraries.
        let value: serde_json::Value = serde_json::from_str(r#"{"shed": [1, 2]}"#).unwrap();
        let sum = std::thread::spawn(move || value["shed"].as_array().unwrap().len())
            .join()
            .unwrap();
        assert_eq!(sum, 2);
    }
}
