//! The `oci2rootfs` crate behind oci2rootfs's command-line contract,
//! `oci2rootfs SOURCE --output OUT [--size BYTES]`: a real external converter
//! for the `command:` backend's tests.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut source, mut output, mut size) = (None, None, 512u64 << 20);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--output" => output = it.next().cloned(),
            "--size" => match it.next().and_then(|s| s.parse().ok()) {
                Some(s) => size = s,
                None => {
                    eprintln!("oci2rootfs: --size needs a number of bytes");
                    return ExitCode::from(2);
                }
            },
            other if source.is_none() => source = Some(other.to_owned()),
            other => {
                eprintln!("oci2rootfs: unexpected argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(source), Some(output)) = (source, output) else {
        eprintln!("usage: oci2rootfs SOURCE --output OUT [--size BYTES]");
        return ExitCode::from(2);
    };
    let result =
        oci2rootfs::autodetect(&source).and_then(|s| oci2rootfs::Converter::new(&output).size(size).convert(s));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oci2rootfs: {e}");
            ExitCode::from(1)
        }
    }
}
