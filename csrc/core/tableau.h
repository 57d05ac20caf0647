// Explicit Runge-Kutta methods as data: one struct per method, no per-method loop.
//
// A method is its Butcher tableau (c, a, b), an order, and how it steps:
// - adaptive methods carry error weights e = b - b_hat (embedded lower-order solution) and the weights
//   `mid` of y(t0 + h/2) for the quartic dense output (core/dense_output.h). The adaptive loops reuse
//   the last stage's derivative as the next step's k0 (torchdiffeq's convention for every method, FSAL or
//   not); y1 is the last stage's input when the method is FSAL (is_fsal), else y0 + h sum_j b_j k_j.
// - fixed-grid methods (e and mid unused) evaluate k0 = f(t0, y0) every step and interpolate their
//   outputs linearly or by cubic Hermite (solver/fixed_grid.cpp), as torchdiffeq's fixed-grid solvers.
// Every tableau's order conditions are checked from this data by tests/test_methods.py (via _C.tableau).
#pragma once

#include <array>
#include <string_view>

namespace fde::core {

inline constexpr int kMaxStages = 14;  // torchdiffeq's dopri8: 13 stages and the FSAL one

enum class Stepping { kAdaptive, kFixed };

struct Tableau {
  std::string_view name;
  int stages;          // number of stages (k_0 .. k_{S-1})
  int order;           // order of the propagated solution; the controller uses ratio^(-1/order)
  Stepping stepping;
  double c[kMaxStages];                 // stage times as fractions of h
  double a[kMaxStages][kMaxStages];     // a[i][j], j < i: stage i input = y0 + h sum_j a[i][j] k_j
  double b[kMaxStages];                 // propagated solution weights
  double e[kMaxStages];                 // error weights b - b_hat (adaptive methods)
  double mid[kMaxStages];               // y(t0 + h/2) ~= y0 + h sum_j mid[j] k_j (adaptive dense output)
};

// First same as last: the last stage is evaluated at t0 + h and at the propagated solution
// (a[S-1] == b, b[S-1] == 0), so its input is y1 and no extra weighted sum is needed.
constexpr bool is_fsal(const Tableau& t) {
  const int L = t.stages - 1;
  if (L < 1 || t.c[L] != 1.0 || t.b[L] != 0.0) return false;
  for (int j = 0; j < L; ++j)
    if (t.a[L][j] != t.b[j]) return false;
  return true;
}

namespace detail {
// h * p(h) at h = 1/2 for p(h) = c5 h^5 + c4 h^4 + c3 h^3 + c2 h^2 + c1 h + c0, summed left to right as
// torchdiffeq's dopri8.py writes its midpoint weights (the products with powers of two are exact).
constexpr double at_half(double c5, double c4, double c3, double c2, double c1, double c0 = 0.0) {
  const double h = 0.5;
  double s = c5 * (h * h * h * h * h);
  s = s + c4 * (h * h * h * h);
  s = s + c3 * (h * h * h);
  s = s + c2 * (h * h);
  s = s + c1 * h;
  if (c0 != 0.0) s = s + c0;
  return s / (1.0 / h);
}
}  // namespace detail

// Dormand-Prince 5(4) with Shampine's embedded 4th-order weights and continuous extension, as
// torchdiffeq's 'dopri5' uses them (same error estimate -> same steps).
inline constexpr Tableau kDopri5{
    "dopri5", 7, 5, Stepping::kAdaptive,
    {0.0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1.0, 1.0},
    {{0},
     {1.0 / 5},
     {3.0 / 40, 9.0 / 40},
     {44.0 / 45, -56.0 / 15, 32.0 / 9},
     {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
     {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656},
     {35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84}},
    {35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84, 0.0},
    {35.0 / 384 - 1951.0 / 21600, 0.0, 500.0 / 1113 - 22642.0 / 50085, 125.0 / 192 - 451.0 / 720,
     -2187.0 / 6784 + 12231.0 / 42400, 11.0 / 84 - 649.0 / 6300, -1.0 / 60},
    {6025192743.0 / 30085553152 / 2, 0.0, 51252292925.0 / 65400821598 / 2,
     -2691868925.0 / 45128329728 / 2, 187940372067.0 / 1594534317056 / 2,
     -1776094331.0 / 19743644256 / 2, 11237099.0 / 235043384 / 2}};

// Tsitouras 5(4) (Ch. Tsitouras, Comput. Math. Appl. 62, 2011). The midpoint weights are its
// 4th-order continuous extension b_j(theta) evaluated at theta = 1/2.
inline constexpr Tableau kTsit5{
    "tsit5", 7, 5, Stepping::kAdaptive,
    {0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0},
    {{0},
     {0.161},
     {-0.008480655492356989, 0.335480655492357},
     {2.897153057105493, -6.359448489975075, 4.3622954328695815},
     {5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525},
     {5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
      -0.028269050394068383},
     {0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
      2.324710524099774}},
    {0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774, 0.0},
    {0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995, 0.1447110071732629,
     -0.5823571654525552, 0.45808210592918697, -0.015151515151515152},
    {0.10741235230096871, 0.01135625, 0.39560903056045305, -0.34475214352593553,
     1.3161853649581645, -1.0170608542936508, 0.03125}};

// Bogacki-Shampine 3(2). The midpoint weights give the cubic Hermite interpolant through
// (y0, h k0) and (y1, h k3): y_mid = (y0 + y1)/2 + h (k0 - k3)/8. (torchdiffeq uses y0 + h k1/2,
// a lower-order midpoint; steps and NFE are unaffected, only interpolated outputs differ.)
inline constexpr Tableau kBosh3{
    "bosh3", 4, 3, Stepping::kAdaptive,
    {0.0, 0.5, 0.75, 1.0},
    {{0}, {0.5}, {0.0, 0.75}, {2.0 / 9, 1.0 / 3, 4.0 / 9}},
    {2.0 / 9, 1.0 / 3, 4.0 / 9, 0.0},
    {2.0 / 9 - 7.0 / 24, 1.0 / 3 - 1.0 / 4, 4.0 / 9 - 1.0 / 3, -1.0 / 8},
    {1.0 / 9 + 1.0 / 8, 1.0 / 6, 2.0 / 9, -1.0 / 8}};

// Fehlberg's 2(1) pair as torchdiffeq's 'fehlberg2': the third stage is evaluated at the first-order
// solution, which is not the propagated one (not FSAL); its derivative still becomes the next k0.
inline constexpr Tableau kFehlberg2{
    "fehlberg2", 3, 2, Stepping::kAdaptive,
    {0.0, 0.5, 1.0},
    {{0}, {0.5}, {1.0 / 256, 255.0 / 256}},
    {1.0 / 512, 255.0 / 256, 1.0 / 512},
    {-1.0 / 512, 0.0, 1.0 / 512},
    {0.0, 0.5, 0.0}};

// Heun's method with Euler as the embedded solution (torchdiffeq's 'adaptive_heun'); its midpoint
// weights are torchdiffeq's (an Euler half step).
inline constexpr Tableau kAdaptiveHeun{
    "adaptive_heun", 2, 2, Stepping::kAdaptive,
    {0.0, 1.0},
    {{0}, {1.0}},
    {0.5, 0.5},
    {0.5, -0.5},
    {0.5, 0.0}};

// Dormand-Prince 8(7) as torchdiffeq's 'dopri8' (13 stages and the FSAL one, its rational coefficients),
// with the midpoint of its continuous extension for the quartic dense output, as torchdiffeq uses it.
inline constexpr Tableau kDopri8{
    "dopri8", 14, 8, Stepping::kAdaptive,
    {0.0, 1.0 / 18, 1.0 / 12, 1.0 / 8, 5.0 / 16, 3.0 / 8, 59.0 / 400, 93.0 / 200, 5490023248.0 / 9719169821,
     13.0 / 20, 1201146811.0 / 1299019798, 1.0, 1.0, 1.0},
    {{0},
     {1.0 / 18},
     {1.0 / 48, 1.0 / 16},
     {1.0 / 32, 0.0, 3.0 / 32},
     {5.0 / 16, 0.0, -75.0 / 64, 75.0 / 64},
     {3.0 / 80, 0.0, 0.0, 3.0 / 16, 3.0 / 20},
     {29443841.0 / 614563906, 0.0, 0.0, 77736538.0 / 692538347, -28693883.0 / 1125000000,
      23124283.0 / 1800000000},
     {16016141.0 / 946692911, 0.0, 0.0, 61564180.0 / 158732637, 22789713.0 / 633445777,
      545815736.0 / 2771057229, -180193667.0 / 1043307555},
     {39632708.0 / 573591083, 0.0, 0.0, -433636366.0 / 683701615, -421739975.0 / 2616292301,
      100302831.0 / 723423059, 790204164.0 / 839813087, 800635310.0 / 3783071287},
     {246121993.0 / 1340847787, 0.0, 0.0, -37695042795.0 / 15268766246, -309121744.0 / 1061227803,
      -12992083.0 / 490766935, 6005943493.0 / 2108947869, 393006217.0 / 1396673457, 123872331.0 / 1001029789},
     {-1028468189.0 / 846180014, 0.0, 0.0, 8478235783.0 / 508512852, 1311729495.0 / 1432422823,
      -10304129995.0 / 1701304382, -48777925059.0 / 3047939560, 15336726248.0 / 1032824649,
      -45442868181.0 / 3398467696, 3065993473.0 / 597172653},
     {185892177.0 / 718116043, 0.0, 0.0, -3185094517.0 / 667107341, -477755414.0 / 1098053517,
      -703635378.0 / 230739211, 5731566787.0 / 1027545527, 5232866602.0 / 850066563, -4093664535.0 / 808688257,
      3962137247.0 / 1805957418, 65686358.0 / 487910083},
     {403863854.0 / 491063109, 0.0, 0.0, -5068492393.0 / 434740067, -411421997.0 / 543043805,
      652783627.0 / 914296604, 11173962825.0 / 925320556, -13158990841.0 / 6184727034, 3936647629.0 / 1978049680,
      -160528059.0 / 685178525, 248638103.0 / 1413531060, 0.0},
     {14005451.0 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493.0 / 1068277825, 181606767.0 / 758867731,
      561292985.0 / 797845732, -1041891430.0 / 1371343529, 760417239.0 / 1151165299, 118820643.0 / 751138087,
      -528747749.0 / 2220607170, 1.0 / 4}},
    {14005451.0 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493.0 / 1068277825, 181606767.0 / 758867731,
     561292985.0 / 797845732, -1041891430.0 / 1371343529, 760417239.0 / 1151165299, 118820643.0 / 751138087,
     -528747749.0 / 2220607170, 1.0 / 4, 0.0},
    {14005451.0 / 335480064 - 13451932.0 / 455176623, 0.0, 0.0, 0.0, 0.0,
     -59238493.0 / 1068277825 - -808719846.0 / 976000145, 181606767.0 / 758867731 - 1757004468.0 / 5645159321,
     561292985.0 / 797845732 - 656045339.0 / 265891186, -1041891430.0 / 1371343529 - -3867574721.0 / 1518517206,
     760417239.0 / 1151165299 - 465885868.0 / 322736535, 118820643.0 / 751138087 - 53011238.0 / 667516719,
     -528747749.0 / 2220607170 - 2.0 / 45, 1.0 / 4, 0.0},
    {detail::at_half(-6.3448349392860401388, 22.1396504998094068976, -30.0610568289666450593,
                     19.9990069333683970610, -6.6910181737837595697, 1.0),
     0.0, 0.0, 0.0, 0.0,
     detail::at_half(-39.6107919852202505218, 116.4422149550342161651, -121.4999627731334642623,
                     52.2273532792945524050, -7.6142658045872677172),
     detail::at_half(20.3761213808791436958, -67.1451318825957197185, 83.1721004639847717481,
                     -46.8919164181093621583, 10.7281392630428866124),
     detail::at_half(7.3347098826795362023, -16.5672243527496524646, 9.5724507555993664382,
                     -0.1890893225010595467, 0.5526637063753648783),
     detail::at_half(32.8801774352459155182, -89.9916014847245016028, 87.8406057677205645007,
                     -35.7075975946222072821, 4.2186562625665153803),
     detail::at_half(-10.1588990526426760954, 22.6237489648532849093, -17.4152107770762969005,
                     6.2736448083240352160, -0.6627209125361597559),
     detail::at_half(-12.5401268098782561200, 32.2362340167355370113, -28.5903289514790976966,
                     10.3160881272450748458, -1.2636789001135462218),
     detail::at_half(29.5553001484516038033, -82.1020315488359848644, 81.6630950584341412934,
                     -34.7650769866611817349, 5.4106037898590422230),
     detail::at_half(-41.7923486424390588923, 116.2662185791119533462, -114.9375291377009418170,
                     47.7457971078225540396, -7.0321379067945741781),
     detail::at_half(20.3006925822100825485, -53.9020777466385396792, 50.2558364226176017553,
                     -19.0082099341608028453, 2.3537586759714983486)}};

// Fixed-grid methods (torchdiffeq's fixed_grid.py): k0 = f(t0, y0) every step, y1 = y0 + h sum_j b_j k_j.
inline constexpr Tableau kEuler{"euler", 1, 1, Stepping::kFixed, {0.0}, {{0}}, {1.0}, {}, {}};

inline constexpr Tableau kMidpoint{"midpoint", 2, 2, Stepping::kFixed, {0.0, 0.5}, {{0}, {0.5}}, {0.0, 1.0}, {}, {}};

inline constexpr Tableau kHeun2{"heun2", 2, 2, Stepping::kFixed, {0.0, 1.0}, {{0}, {1.0}}, {0.5, 0.5}, {}, {}};

inline constexpr Tableau kHeun3{"heun3", 3, 3, Stepping::kFixed,
                                {0.0, 1.0 / 3, 2.0 / 3},
                                {{0}, {1.0 / 3}, {0.0, 2.0 / 3}},
                                {0.25, 0.0, 0.75}, {}, {}};

// torchdiffeq's 'rk4' is Kutta's 3/8 rule (rk4_alt_step_func), not the classical RK4.
inline constexpr Tableau kRk4{"rk4", 4, 4, Stepping::kFixed,
                              {0.0, 1.0 / 3, 2.0 / 3, 1.0},
                              {{0}, {1.0 / 3}, {-1.0 / 3, 1.0}, {1.0, -1.0, 1.0}},
                              {0.125, 0.375, 0.375, 0.125}, {}, {}};

inline constexpr std::array<const Tableau*, 11> kAllTableaus{
    &kDopri5, &kTsit5, &kBosh3, &kFehlberg2, &kAdaptiveHeun, &kDopri8,
    &kEuler, &kMidpoint, &kHeun2, &kHeun3, &kRk4};

static_assert(is_fsal(kDopri5) && is_fsal(kTsit5) && is_fsal(kBosh3) && is_fsal(kDopri8));
static_assert(!is_fsal(kFehlberg2) && !is_fsal(kAdaptiveHeun));

// nullptr when the name is unknown.
inline const Tableau* find_tableau(std::string_view name) {
  for (const Tableau* t : kAllTableaus)
    if (t->name == name) return t;
  return nullptr;
}

}  // namespace fde::core
