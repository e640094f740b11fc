//! Checks the binary before it is packaged: the image has no libc and no loader, so a
//! dynamically linked binary would be packaged fine and then fail in `docker run` with a bare
//! "no such file or directory". Reading the ELF header turns that into a message at build time,
//! and also catches a binary of another architecture than the platform the image claims.

use oci::Platform;

/// What the ELF header says about a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// The `architecture` an OCI platform gives this machine type (`amd64`, `arm64`, `arm`).
    pub architecture: &'static str,
    /// Whether the binary asks for a program interpreter (a dynamic loader such as
    /// `/lib64/ld-linux-x86-64.so.2`); a static (or static-pie) binary does not.
    pub interpreter: Option<String>,
}

const PT_INTERP: u32 = 3;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Reads the ELF header and program headers of `binary`.
pub fn inspect(binary: &[u8]) -> Result<ElfFacts, String> {
    if binary.len() < 0x34 || &binary[..4] != ELF_MAGIC {
        return Err("it is not an ELF executable (a Linux binary)".into());
    }
    let wide = match binary[4] {
        1 => false,
        2 => true,
        other => return Err(format!("its ELF class {other} is neither 32 nor 64 bit")),
    };
    let little = match binary[5] {
        1 => true,
        2 => false,
        other => return Err(format!("its ELF byte order {other} is unknown")),
    };
    let read = |at: usize, len: usize| -> Result<u64, String> {
        let bytes = binary
            .get(at..at.saturating_add(len))
            .ok_or("its ELF headers are cut short")?;
        let mut v = 0u64;
        for i in 0..len {
            let b = if little { bytes[len - 1 - i] } else { bytes[i] };
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    };
    let architecture = match read(0x12, 2)? {
        0x3e => "amd64",
        0xb7 => "arm64",
        0x28 => "arm",
        0x03 => "386",
        0xf3 => "riscv64",
        0x15 => "ppc64le",
        0x16 => "s390x",
        other => {
            return Err(format!(
                "its ELF machine type {other:#x} is not one we know"
            ))
        }
    };
    let (ph_off, ph_size, ph_num) = if wide {
        (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?)
    } else {
        (read(0x1c, 4)?, read(0x2a, 2)?, read(0x2c, 2)?)
    };
    let mut interpreter = None;
    for i in 0..ph_num {
        let at = i
            .checked_mul(ph_size)
            .and_then(|o| o.checked_add(ph_off))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or("its program headers lie outside the file")?;
        if read(at, 4)? as u32 != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (read(at + 8, 8)?, read(at + 32, 8)?)
        } else {
            (read(at + 4, 4)?, read(at + 16, 4)?)
        };
        let path = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(offset, size)| binary.get(offset..offset.checked_add(size)?))
            .ok_or("its program interpreter lies outside the file")?;
        let path = String::from_utf8_lossy(path);
        interpreter = Some(path.trim_end_matches('\0').to_owned());
    }
    Ok(ElfFacts {
        architecture,
        interpreter,
    })
}

/// Checks that `binary` is a static executable for `platform`; the error says how to build one.
pub fn check(binary: &[u8], platform: &Platform, shown: &str) -> Result<(), String> {
    let facts = inspect(binary).map_err(|why| format!("{shown}: {why}"))?;
    if let Some(loader) = facts.interpreter {
        return Err(format!(
            "{shown} is dynamically linked (it needs the loader {loader}), but the image has no \
             libc: build a static binary, e.g. RUSTFLAGS=\"-C target-feature=+crt-static\" cargo \
             build --release --target x86_64-unknown-linux-gnu (see image/build.sh)"
        ));
    }
    if facts.architecture != platform.architecture {
        return Err(format!(
            "{shown} is built for {}, but the image is for {platform}: pass the binary built for \
             that platform, or --platform linux/{}",
            facts.architecture, facts.architecture
        ));
    }
    Ok(())
}

/// The OCI platform of the machine this program was built for (`linux/amd64`,
/// `linux/arm64/v8`, `linux/arm/v7`).
pub fn this_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        other => (other, None),
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: variant.map(Into::into),
        ..Platform::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_an_elf_of_this_machine() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let facts = inspect(&me).unwrap();
        assert_eq!(facts.architecture, this_platform().architecture);
    }

    #[test]
    fn garbage_is_refused_with_a_reason_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x7fELF",
            b"#!/bin/sh\necho hi\n",
            &[
                0x7f, b'E', b'L', b'F', 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ] {
            assert!(inspect(bad).is_err(), "{bad:?}");
        }
    }
}
