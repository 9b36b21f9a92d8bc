//! Verified streaming of blobs: every block checked against the root hash as
//! it arrives.
//!
//! A blob is cut into blocks of [`BLOCK_LEN`] bytes (a power of two of BLAKE3
//! chunks, so each block is a whole subtree of the BLAKE3 tree). The block
//! *chaining values* (one 32-byte value per block, 1/32768 of the blob) are the
//! blob's **tree**. A receiver first gets the tree and checks it against the
//! root hash (merging the values up the BLAKE3 tree must give the root); from
//! then on each block is checked on its own against its value. A peer that
//! sends one wrong block is caught at that block, whatever the others send.
//! The root is the plain `blake3::hash` of the whole blob, so blob names do
//! not change.
//!
//! Pure code: the node feeds bytes in and reads verdicts out.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::ids::BlobHash;

/// Bytes per verified block: 1 MiB (1024 BLAKE3 chunks).
pub const BLOCK_LEN: u64 = 1 << 20;

/// The size of one chaining value in a tree.
pub const CV_LEN: usize = 32;

/// How many blocks a blob of `total` bytes has (an empty blob has one, empty).
pub fn block_count(total: u64) -> u64 {
    total.div_ceil(BLOCK_LEN).max(1)
}

/// The byte range `(offset, len)` of block `index` in a blob of `total` bytes.
pub fn block_range(total: u64, index: u64) -> (u64, u64) {
    let offset = index * BLOCK_LEN;
    (offset, BLOCK_LEN.min(total.saturating_sub(offset)))
}

/// The chaining value of block `index` (its bytes given). Only meaningful
/// for blobs of more than one block.
pub fn block_cv(index: u64, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * BLOCK_LEN);
    h.update(data);
    h.finalize_non_root()
}

/// Hashes a blob as it is written: yields its root hash and its tree.
#[derive(Default)]
pub struct TreeHasher {
    block: Option<blake3::Hasher>,
    in_block: u64,
    index: u64,
    cvs: Vec<ChainingValue>,
    /// The first block's bytes are hashed twice until we know whether the
    /// blob is longer than one block (a one-block blob's root is a plain hash).
    whole: blake3::Hasher,
    total: u64,
}

impl TreeHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.index == 0 {
            let take = data.len().min((BLOCK_LEN - self.in_block) as usize);
            self.whole.update(&data[..take]);
        }
        while !data.is_empty() {
            if self.in_block == BLOCK_LEN {
                self.close_block();
            }
            let take = data.len().min((BLOCK_LEN - self.in_block) as usize);
            let index = self.index;
            self.block
                .get_or_insert_with(|| {
                    let mut h = blake3::Hasher::new();
                    h.set_input_offset(index * BLOCK_LEN);
                    h
                })
                .update(&data[..take]);
            self.in_block += take as u64;
            data = &data[take..];
        }
    }

    fn close_block(&mut self) {
        if let Some(h) = self.block.take() {
            self.cvs.push(h.finalize_non_root());
        }
        self.in_block = 0;
        self.index += 1;
    }

    /// The root hash, the total length and the tree (empty for a blob of one block).
    pub fn finish(mut self) -> (BlobHash, u64, Vec<u8>) {
        if self.index == 0 {
            return (
                BlobHash::from(self.whole.finalize()),
                self.total,
                Vec::new(),
            );
        }
        self.close_block();
        let root = root_of(&self.cvs);
        (root, self.total, self.cvs.concat())
    }
}

/// Merges the block values of a blob of more than one block up to its root.
fn root_of(cvs: &[ChainingValue]) -> BlobHash {
    debug_assert!(cvs.len() >= 2);
    let split = left_blocks(cvs.len());
    let (l, r) = cvs.split_at(split);
    BlobHash::from(merge_subtrees_root(&subtree(l), &subtree(r), Mode::Hash))
}

fn subtree(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_blocks(cvs.len());
    let (l, r) = cvs.split_at(split);
    merge_subtrees_non_root(&subtree(l), &subtree(r), Mode::Hash)
}

/// BLAKE3 puts the largest power of two of chunks that leaves at least one
/// on the left; with power-of-two blocks that is the largest power of two of
/// blocks below `n`.
fn left_blocks(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// A blob's tree, checked against its root: the thing that judges blocks.
#[derive(Debug, Clone)]
pub struct VerifiedTree {
    root: BlobHash,
    total: u64,
    cvs: Vec<ChainingValue>,
}

/// Why a tree or a block was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The tree has the wrong size for the blob's length.
    TreeSize { expected: usize, got: usize },
    /// The tree does not merge to the root hash.
    TreeMismatch,
    /// A block of the wrong length.
    BlockSize { index: u64, expected: u64, got: u64 },
    /// A block whose bytes do not hash to its value.
    BlockMismatch { index: u64 },
    /// A block the blob does not have.
    NoSuchBlock { index: u64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TreeSize { expected, got } => {
                write!(f, "tree of {got} bytes where {expected} were expected")
            }
            Refusal::TreeMismatch => f.write_str("the tree does not match the blob's hash"),
            Refusal::BlockSize {
                index,
                expected,
                got,
            } => write!(f, "block {index} has {got} bytes, not {expected}"),
            Refusal::BlockMismatch { index } => {
                write!(f, "block {index} does not match the blob's hash")
            }
            Refusal::NoSuchBlock { index } => write!(f, "the blob has no block {index}"),
        }
    }
}

impl VerifiedTree {
    /// Checks a tree received for blob `root` of `total` bytes.
    pub fn check(root: BlobHash, total: u64, tree: &[u8]) -> Result<Self, Refusal> {
        let blocks = block_count(total);
        let expected = if blocks == 1 {
            0
        } else {
            blocks as usize * CV_LEN
        };
        if tree.len() != expected {
            return Err(Refusal::TreeSize {
                expected,
                got: tree.len(),
            });
        }
        let cvs: Vec<ChainingValue> = tree
            .chunks_exact(CV_LEN)
            .map(|c| c.try_into().expect("chunks_exact gives CV_LEN bytes"))
            .collect();
        if blocks > 1 && root_of(&cvs) != root {
            return Err(Refusal::TreeMismatch);
        }
        Ok(VerifiedTree { root, total, cvs })
    }

    pub fn root(&self) -> BlobHash {
        self.root
    }
    pub fn total(&self) -> u64 {
        self.total
    }
    pub fn blocks(&self) -> u64 {
        block_count(self.total)
    }

    /// The tree's bytes (to keep next to a partial download or to serve).
    pub fn bytes(&self) -> Vec<u8> {
        self.cvs.concat()
    }

    /// Checks one block's bytes.
    pub fn check_block(&self, index: u64, data: &[u8]) -> Result<(), Refusal> {
        if index >= self.blocks() {
            return Err(Refusal::NoSuchBlock { index });
        }
        let (_, expected) = block_range(self.total, index);
        if data.len() as u64 != expected {
            return Err(Refusal::BlockSize {
                index,
                expected,
                got: data.len() as u64,
            });
        }
        let ok = if self.cvs.is_empty() {
            BlobHash::of(data) == self.root
        } else {
            block_cv(index, data) == self.cvs[index as usize]
        };
        if ok {
            Ok(())
        } else {
            Err(Refusal::BlockMismatch { index })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn tree_of(d: &[u8], pieces: usize) -> (BlobHash, u64, Vec<u8>) {
        let mut t = TreeHasher::new();
        for p in d.chunks(pieces.max(1)) {
            t.update(p);
        }
        if d.is_empty() {
            t.update(&[]);
        }
        t.finish()
    }

    #[test]
    fn root_is_the_plain_blake3_hash_for_every_shape() {
        let b = BLOCK_LEN as usize;
        for len in [
            0,
            1,
            1024,
            1025,
            b - 1,
            b,
            b + 1,
            2 * b,
            2 * b + 7,
            3 * b,
            5 * b + 1,
            8 * b,
        ] {
            let d = data(len);
            for pieces in [len.max(1), 4096, 999_983] {
                let (root, total, tree) = tree_of(&d, pieces);
                assert_eq!(root, BlobHash::of(&d), "len {len} pieces {pieces}");
                assert_eq!(total, len as u64);
                let v = VerifiedTree::check(root, total, &tree).unwrap();
                for i in 0..v.blocks() {
                    let (o, l) = block_range(total, i);
                    v.check_block(i, &d[o as usize..(o + l) as usize]).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_wrong_block_or_tree_is_caught() {
        let b = BLOCK_LEN as usize;
        let d = data(3 * b + 100);
        let (root, total, tree) = tree_of(&d, 65536);
        let v = VerifiedTree::check(root, total, &tree).unwrap();
        let mut bad = d[b..2 * b].to_vec();
        bad[12345] ^= 1;
        assert_eq!(
            v.check_block(1, &bad),
            Err(Refusal::BlockMismatch { index: 1 })
        );
        // The right bytes under the wrong index.
        assert!(v.check_block(2, &d[b..2 * b]).is_err());
        assert!(matches!(
            v.check_block(3, &d[3 * b..3 * b + 99]),
            Err(Refusal::BlockSize { .. })
        ));
        assert!(v.check_block(4, &[]).is_err());
        let mut t2 = tree.clone();
        t2[40] ^= 1;
        assert_eq!(
            VerifiedTree::check(root, total, &t2).unwrap_err(),
            Refusal::TreeMismatch
        );
        assert!(VerifiedTree::check(root, total, &tree[..64]).is_err());
        // A one-block blob has no tree; its block is checked against the root.
        let small = data(5000);
        let v = VerifiedTree::check(BlobHash::of(&small), 5000, &[]).unwrap();
        v.check_block(0, &small).unwrap();
        assert!(v.check_block(0, &small[1..]).is_err());
    }
}
