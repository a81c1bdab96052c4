// util/fmt.cpp — the compiled part of {fmt}, once for the whole program.
//
// libtorch's include directory carries fmt 12's headers, and an imported target's include directories
// are searched before /usr/include: every deltatune source sees those headers, whatever fmt the system
// has. So deltatune compiles their implementation here (what libfmt's src/format.cc does) instead of
// linking a system libfmt of another version; util's CMakeLists puts torch's include directory on
// every target.
#include <fmt/format-inl.h>

FMT_BEGIN_NAMESPACE
namespace detail {

template FMT_API auto dragonbox::to_decimal(float x) noexcept -> dragonbox::decimal_fp<float>;
template FMT_API auto dragonbox::to_decimal(double x) noexcept -> dragonbox::decimal_fp<double>;
template FMT_API auto thousands_sep_impl(locale_ref) -> thousands_sep_result<char>;
template FMT_API auto decimal_point_impl(locale_ref) -> char;
template FMT_API auto thousands_sep_impl(locale_ref) -> thousands_sep_result<wchar_t>;
template FMT_API auto decimal_point_impl(locale_ref) -> wchar_t;

}  // namespace detail
FMT_END_NAMESPACE
