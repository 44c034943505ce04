//! The directory hash of hashed (htree) directories: half-MD4, the
//! variant that reads name bytes as *signed* chars (the superblock's
//! `s_flags` says "signed", as on x86, where the kernel's `char` is signed).
//!
//! This follows the kernel's `ext4fs_dirhash` (`fs/ext4/hash.c`) for
//! `DX_HASH_HALF_MD4`, bit for bit: the name is cut into 32-byte pieces,
//! each turned into eight 32-bit words (bytes sign-extended and shifted in,
//! the missing ones padded with a word made of the name's remaining
//! length), and fed to a cut-down MD4 round whose state starts from the
//! filesystem's hash seed (or MD4's initial state when the seed is all
//! zeros). The major hash is the state's second word with its low bit
//! cleared (the low bit marks hash collisions in index entries); the minor
//! hash is the third word.

/// MD4's initial state: the seed the kernel uses when `s_hash_seed` is all
/// zeros.
const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The highest major hash the kernel ever gives: it reserves `0xfffffffe`
/// (`EXT4_HTREE_EOF_32BIT << 1`) as the end-of-directory mark for
/// `readdir` and gives names that hash to it this value instead.
const EOF_REPLACEMENT: u32 = (0x7fff_ffff - 1) << 1;

/// The (major, minor) half-MD4 hash of `name` with the filesystem's hash
/// seed `seed` (`s_hash_seed`, four little-endian words), as the kernel
/// computes it for a lookup: the major hash always has its low bit clear.
///
/// e2fsprogs' `ext2fs_dirhash` gives the same values except for the names
/// (about one in 2^31) whose major hash is `0xfffffffe`, which the kernel
/// turns into `0xfffffffc`; the writer sorts by the kernel's value.
pub fn half_md4(name: &[u8], seed: &[u8; 16]) -> (u32, u32) {
    let words = |i: usize| u32::from_le_bytes([seed[4 * i], seed[4 * i + 1], seed[4 * i + 2], seed[4 * i + 3]]);
    let given = [words(0), words(1), words(2), words(3)];
    let mut state = if given == [0; 4] { DEFAULT_SEED } else { given };
    let mut rest = name;
    while !rest.is_empty() {
        transform(&mut state, &message(rest));
        rest = &rest[rest.len().min(32)..];
    }
    let major = state[1] & !1;
    let major = if major == 0xffff_fffe { EOF_REPLACEMENT } else { major };
    (major, state[2])
}

/// The eight message words of the next piece of `rest` (the kernel's
/// `str2hashbuf_signed`): bytes sign-extended and shifted in four to a word
/// over a padding word made of the remaining length; words past the piece
/// are the padding itself.
fn message(rest: &[u8]) -> [u32; 8] {
    // The padding repeats the low byte of the *remaining* length (not the
    // piece's) four times, as the kernel does.
    let len = rest.len() as u32;
    let pad = {
        let p = len | (len << 8);
        p | (p << 16)
    };
    let mut out = [pad; 8];
    let piece = &rest[..rest.len().min(32)];
    let mut val = pad;
    for (i, &byte) in piece.iter().enumerate() {
        let c = byte as i8 as i32 as u32;
        val = c.wrapping_add(val << 8);
        if i % 4 == 3 {
            out[i / 4] = val;
            val = pad;
        }
    }
    if !piece.len().is_multiple_of(4) {
        out[piece.len() / 4] = val;
    }
    out
}

/// The cut-down MD4 transform (three rounds of eight steps) of the kernel's
/// `half_md4_transform`, adding into `state`.
fn transform(state: &mut [u32; 4], m: &[u32; 8]) {
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *state;
    // One step: a = rotl(a + fun(b, c, d) + x, s).
    macro_rules! step {
        ($fun:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($fun($b, $c, $d)).wrapping_add($x).rotate_left($s);
        };
    }
    // Round 1.
    step!(f, a, b, c, d, m[0], 3);
    step!(f, d, a, b, c, m[1], 7);
    step!(f, c, d, a, b, m[2], 11);
    step!(f, b, c, d, a, m[3], 19);
    step!(f, a, b, c, d, m[4], 3);
    step!(f, d, a, b, c, m[5], 7);
    step!(f, c, d, a, b, m[6], 11);
    step!(f, b, c, d, a, m[7], 19);
    // Round 2.
    step!(g, a, b, c, d, m[1].wrapping_add(K2), 3);
    step!(g, d, a, b, c, m[3].wrapping_add(K2), 5);
    step!(g, c, d, a, b, m[5].wrapping_add(K2), 9);
    step!(g, b, c, d, a, m[7].wrapping_add(K2), 13);
    step!(g, a, b, c, d, m[0].wrapping_add(K2), 3);
    step!(g, d, a, b, c, m[2].wrapping_add(K2), 5);
    step!(g, c, d, a, b, m[4].wrapping_add(K2), 9);
    step!(g, b, c, d, a, m[6].wrapping_add(K2), 13);
    // Round 3.
    step!(h, a, b, c, d, m[3].wrapping_add(K3), 3);
    step!(h, d, a, b, c, m[7].wrapping_add(K3), 9);
    step!(h, c, d, a, b, m[2].wrapping_add(K3), 11);
    step!(h, b, c, d, a, m[6].wrapping_add(K3), 15);
    step!(h, a, b, c, d, m[1].wrapping_add(K3), 3);
    step!(h, d, a, b, c, m[5].wrapping_add(K3), 9);
    step!(h, c, d, a, b, m[0].wrapping_add(K3), 11);
    step!(h, b, c, d, a, m[4].wrapping_add(K3), 15);
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_from_debugfs() {
        // `debugfs -R "dx_hash -h half_md4 -s 00000000-0000-0000-0000-000000000000 hello"`
        assert_eq!(half_md4(b"hello", &[0; 16]), (0x1746_da32, 0x4200_13b5));
    }

    #[test]
    fn the_major_hash_has_its_low_bit_clear() {
        for i in 0..1000u32 {
            let (major, _) = half_md4(format!("name-{i}").as_bytes(), b"hash-seed-012345");
            assert_eq!(major & 1, 0);
        }
    }
}
