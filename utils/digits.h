/* Shared by the compiled modules that write integers (utils/jsonfmt.pxd,
   matchengine/rowtext.pxd): the decimal text of a 64-bit integer, as str() writes it,
   without snprintf (which took half the time of the history rows' text). */
#ifndef VIABTC_DIGITS_H
#define VIABTC_DIGITS_H

/* writes the text backwards so that it ends just before `end`, and returns where it starts:
   at most 20 bytes before `end` */
static inline char *viabtc_digits(long long number, char *end) {
    unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number
                                              : (unsigned long long)number;
    do { *--end = (char)('0' + magnitude % 10); magnitude /= 10; } while (magnitude);
    if (number < 0) *--end = '-';
    return end;
}

#endif
