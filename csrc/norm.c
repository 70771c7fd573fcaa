/* Batch norm and relu entry points: both dtypes from one template (norm_impl.h). */
#include <math.h>

#include "fc_internal.h"

#define T float
#define FN(name) fc_f32_##name
#include "norm_impl.h"
#undef T
#undef FN

#define T double
#define FN(name) fc_f64_##name
#include "norm_impl.h"
#undef T
#undef FN
