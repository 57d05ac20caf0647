// Explicit Runge-Kutta methods as data: one struct per method, no per-method loop.
//
// Every method here is FSAL (first same as last): the last stage is evaluated at the propagated
// solution y1 = y0 + h * sum_j b_j k_j, so a[stages-1] == b and its derivative is the next step's k0.
#pragma once

#include <array>
#include <string_view>

namespace fde::core {

inline constexpr int kMaxStages = 7;

struct Tableau {
  std::string_view name;
  int stages;          // number of stages, the FSAL stage included
  int order;           // order of the propagated solution; the controller uses ratio^(-1/order)
  double c[kMaxStages];                 // stage times as fractions of h
  double a[kMaxStages][kMaxStages];     // a[i][j], j < i: stage i input = y0 + h sum_j a[i][j] k_j
  double b[kMaxStages];                 // propagated solution weights
  double e[kMaxStages];                 // error weights b - b_hat (embedded lower-order solution)
  double mid[kMaxStages];               // y(t0 + h/2) ~= y0 + h sum_j mid[j] k_j (dense output)
};

// Dormand-Prince 5(4) with Shampine's embedded 4th-order weights and continuous extension, as
// torchdiffeq's 'dopri5' uses them (same error estimate -> same steps).
inline constexpr Tableau kDopri5{
    "dopri5", 7, 5,
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
    "tsit5", 7, 5,
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
    "bosh3", 4, 3,
    {0.0, 0.5, 0.75, 1.0},
    {{0}, {0.5}, {0.0, 0.75}, {2.0 / 9, 1.0 / 3, 4.0 / 9}},
    {2.0 / 9, 1.0 / 3, 4.0 / 9, 0.0},
    {2.0 / 9 - 7.0 / 24, 1.0 / 3 - 1.0 / 4, 4.0 / 9 - 1.0 / 3, -1.0 / 8},
    {1.0 / 9 + 1.0 / 8, 1.0 / 6, 2.0 / 9, -1.0 / 8}};

inline constexpr std::array<const Tableau*, 3> kAllTableaus{&kDopri5, &kTsit5, &kBosh3};

// nullptr when the name is unknown.
inline const Tableau* find_tableau(std::string_view name) {
  for (const Tableau* t : kAllTableaus)
    if (t->name == name) return t;
  return nullptr;
}

}  // namespace fde::core
