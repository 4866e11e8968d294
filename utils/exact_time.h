/* Shared by the compiled modules that write time stamps (utils/jsonfmt.pxd,
   matchengine/rowtext.pxd): a time stamp from 1e9 to 1e10 (the years 2001 to 2286) times a
   power of ten up to 10^7, rounded to an integer as its exact binary value would be, to
   nearest with ties to even.  Such a double is m * 2^e exactly (53-bit m, e from -23 to
   -19), so the product is m * scale / 2^-e, worked out in 128-bit integers.  The caller
   checks the range. */
#ifndef VIABTC_EXACT_TIME_H
#define VIABTC_EXACT_TIME_H

#include <math.h>
#include <stdint.h>

static inline uint64_t viabtc_scaled_time(double x, uint64_t scale) {
    int exp, shift;
    uint64_t value;
    unsigned __int128 scaled, quotient, remainder, half;
    value = (uint64_t)ldexp(frexp(x, &exp), 53);
    shift = 53 - exp;
    scaled = (unsigned __int128)value * scale;
    quotient = scaled >> shift;
    remainder = scaled & ((((unsigned __int128)1) << shift) - 1);
    half = ((unsigned __int128)1) << (shift - 1);
    if (remainder > half || (remainder == half && (quotient & 1))) quotient++;
    return (uint64_t)quotient;
}

#endif
