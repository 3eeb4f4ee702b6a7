//! Cohere's compressed embedding types (`embedding_types` of `/v1/embed` and `/v2/embed`),
//! computed from the float vector the model produced.
//!
//! * `int8`: fixed-range scaling of the unit vector, `q = round(127 · x / ‖x‖)` (half away
//!   from zero), so every value lies in −127..=127 (−128 is never produced, the range stays
//!   symmetric). One scale for every vector of every request: the int8 dot product of two
//!   vectors is 127² × their cosine up to rounding, so int8 vectors stored in a vector
//!   database rank like the floats under dot product and cosine alike, and a text's int8
//!   vector does not depend on what else was in its batch (a per-vector or per-batch
//!   calibrated scale would give neither). The cost is resolution: a 384-dimensional unit
//!   vector's components are mostly below 0.2, so they use ±25 of the range (cosine of the
//!   int8 vector to the float one ≈ 0.999 on MiniLM).
//! * `uint8`: the same values offset by +128 (1..=255), as `ubinary` is `binary` + 128.
//! * `binary` / `ubinary`: one sign bit per dimension (1 when the value is > 0), packed
//!   eight per byte, the first dimension in the most significant bit; a final partial byte
//!   is padded with 0 bits. `ubinary` is the byte (0..=255), `binary` the byte − 128
//!   (−128..=127), as Cohere and sentence-transformers' `quantize_embeddings` define them.
//! * `base64`: the little-endian f32 bytes of the float vector, base64-encoded (standard
//!   alphabet, padded), like OpenAI's `encoding_format: "base64"`.

use super::embeddings::f32_base64;

/// The largest magnitude of an `int8` value.
const INT8_SCALE: f32 = 127.0;

/// `round(127 · x / ‖x‖)` per component; zeros for a zero vector.
pub fn int8(v: &[f32]) -> Vec<i8> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return vec![0; v.len()];
    }
    v.iter()
        .map(|x| {
            (x / norm * INT8_SCALE)
                .round()
                .clamp(-INT8_SCALE, INT8_SCALE) as i8
        })
        .collect()
}

/// [`int8`] offset by +128.
pub fn uint8(v: &[f32]) -> Vec<u8> {
    int8(v)
        .into_iter()
        .map(|q| (i16::from(q) + 128) as u8)
        .collect()
}

/// Sign bits (1 when > 0) packed eight per byte, most significant bit first.
pub fn ubinary(v: &[f32]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .filter(|(_, &x)| x > 0.0)
                .fold(0u8, |byte, (i, _)| byte | (0x80 >> i))
        })
        .collect()
}

/// [`ubinary`] − 128.
pub fn binary(v: &[f32]) -> Vec<i8> {
    ubinary(v)
        .into_iter()
        .map(|b| (i16::from(b) - 128) as i8)
        .collect()
}

/// Base64 of the little-endian f32 bytes.
pub fn base64(v: &[f32]) -> String {
    f32_base64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_scales_the_unit_vector_by_127() {
        // ‖(3, 4)‖ = 5: 0.6 · 127 = 76.2 → 76, 0.8 · 127 = 101.6 → 102.
        assert_eq!(int8(&[3.0, 4.0]), vec![76, 102]);
        assert_eq!(int8(&[-3.0, 4.0]), vec![-76, 102]);
        // A unit axis reaches the end of the range, never -128.
        assert_eq!(int8(&[0.0, -2.0, 0.0]), vec![0, -127, 0]);
        // ‖(3, 4, 12)‖ = 13: 29.31 → 29, 39.08 → 39, 117.23 → 117; (1, 1): 89.80 → 90.
        assert_eq!(int8(&[3.0, -4.0, 12.0]), vec![29, -39, 117]);
        assert_eq!(int8(&[1.0, -1.0]), vec![90, -90]);
        // The scale does not depend on the length of the input vector.
        assert_eq!(int8(&[30.0, 40.0]), int8(&[0.3, 0.4]));
        assert_eq!(int8(&[0.0, 0.0]), vec![0, 0]);
        assert_eq!(int8(&[f32::NAN, 1.0]), vec![0, 0]);
    }

    #[test]
    fn uint8_is_int8_plus_128() {
        assert_eq!(uint8(&[3.0, 4.0]), vec![204, 230]);
        assert_eq!(uint8(&[0.0, -1.0]), vec![128, 1]);
        assert_eq!(uint8(&[1.0, 0.0]), vec![255, 128]);
    }

    #[test]
    fn binary_packs_sign_bits_most_significant_first() {
        // + - + + - - - + → 1011_0001 = 0xB1 = 177; − 128 = 49.
        let v = [0.1, -0.2, 0.3, 0.4, -0.5, -0.6, -0.7, 0.8];
        assert_eq!(ubinary(&v), vec![177]);
        assert_eq!(binary(&v), vec![49]);
        // Zero counts as negative (bit 0); all positive is 255 / 127, none 0 / -128.
        assert_eq!(ubinary(&[0.0; 8]), vec![0]);
        assert_eq!(binary(&[0.0; 8]), vec![-128]);
        assert_eq!(ubinary(&[1.0; 8]), vec![255]);
        assert_eq!(binary(&[1.0; 8]), vec![127]);
        // 10 dimensions: a second byte holding two bits, padded with zeros: 11 000000.
        let ten = [1.0; 10];
        assert_eq!(ubinary(&ten), vec![255, 0b1100_0000]);
        assert_eq!(binary(&ten), vec![127, 64]);
        assert_eq!(ubinary(&[]), Vec::<u8>::new());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0 = 00 00 80 3f, -2.0 = 00 00 00 c0.
        assert_eq!(base64(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64(&[]), "");
    }
}
